"""GPU backends: guarded NVML queries (n/a instead of crashes), the no-GPU reason, replay from gpu.jsonl."""
import types

from nanotui.runtime import gpu
from nanotui.runtime.rundir import RunDir


class FakeNvml:
    NVML_TEMPERATURE_GPU = 0

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA GeForce RTX 4090"

    def nvmlSystemGetDriverVersion(self):
        return "550.54"

    def nvmlDeviceGetMemoryInfo(self, h):
        return types.SimpleNamespace(used=10 * 2**30, total=24 * 2**30)

    def nvmlDeviceGetUtilizationRates(self, h):
        return types.SimpleNamespace(gpu=97)

    def nvmlDeviceGetPowerUsage(self, h):
        raise RuntimeError("NVMLError_NotSupported")  # one unsupported query

    def nvmlDeviceGetTemperature(self, h, kind):
        return 71

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [types.SimpleNamespace(pid=111, usedGpuMemory=9 * 2**30),
                types.SimpleNamespace(pid=999, usedGpuMemory=2**30)]


def test_nvml_sample_guards_each_query():
    b = gpu.NvmlBackend(FakeNvml(), 1)
    s = b.sample(pids=[111, 112])
    g = s["gpus"][0]
    assert s["available"] and g["name"] == "NVIDIA GeForce RTX 4090"
    assert g["util"] == 97 and g["temp"] == 71 and g["power_w"] is None  # n/a, not a crash
    assert g["mem_total"] == 24 * 2**30 and g["proc_mem"] == 9 * 2**30  # only the run's own processes
    assert set(s["host"]) == {"cpu_pct", "ram_used", "ram_total"}


def test_no_gpu_here_says_why():
    b = gpu.open_backend()
    if b.available:  # on a GPU machine this test has nothing to prove
        return
    s = b.sample()
    assert s["available"] is False and s["gpus"] == [] and s["reason"]
    assert any(w in s["reason"] for w in ("driver", "NVML", "pynvml", "libnvidia-ml"))


def test_missing_library_reason(monkeypatch):
    import builtins
    real = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "pynvml":
            raise ImportError("no pynvml")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    b = gpu.open_backend()
    assert not b.available and "nvidia-ml-py" in b.reason


def test_replay(base_dir):
    rd = RunDir.create(base_dir, {"profile": "x", "stages": []})
    assert "no GPU samples" in gpu.ReplayBackend(rd).reason
    for i in range(3):
        rd.append_gpu({"t": i, "available": True, "reason": None, "gpus": [], "host": {}})
    r = gpu.ReplayBackend(rd.path)
    assert [r.sample()["t"] for _ in range(4)] == [0, 1, 2, 2]
