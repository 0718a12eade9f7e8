"""GPU and host sampling: NVML backend (every query guarded → None), a no-GPU backend that says why, gpu.jsonl replay."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable

import psutil


def _guard(fn: Callable, *args, default=None):
    try:
        return fn(*args)
    except Exception:
        return default


def host_sample() -> dict:
    vm = _guard(psutil.virtual_memory)
    return {"cpu_pct": _guard(psutil.cpu_percent, None),
            "ram_used": getattr(vm, "used", None), "ram_total": getattr(vm, "total", None)}


class NoGpuBackend:
    """No usable GPU; `reason` is shown in the GPU panel instead of numbers."""
    available = False

    def __init__(self, reason: str):
        self.reason = reason
        self.driver_version = None

    def sample(self, pids: Iterable[int] = ()) -> dict:
        return {"t": round(time.time(), 3), "available": False, "reason": self.reason, "gpus": [],
                "host": host_sample()}

    def close(self) -> None:
        pass


class NvmlBackend:
    """NVML through `pynvml` (nvidia-ml-py). Construct with `open_backend()`."""
    available = True
    reason = None

    def __init__(self, nvml, count: int):
        self.nvml = nvml
        self.count = count
        self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        self.names = [_decode(_guard(nvml.nvmlDeviceGetName, h)) for h in self.handles]
        self.driver_version = _decode(_guard(nvml.nvmlSystemGetDriverVersion))

    def _proc_mem(self, h, pids: set[int]) -> int | None:
        if not pids:
            return None
        total, seen = 0, False
        for fn_name in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            procs = _guard(getattr(self.nvml, fn_name, lambda _h: []), h) or []
            for p in procs:
                if p.pid in pids:
                    seen = True
                    mem = getattr(p, "usedGpuMemory", None)
                    if isinstance(mem, int) and mem >= 0:
                        total += mem
        return total if seen else 0

    def sample(self, pids: Iterable[int] = ()) -> dict:
        n = self.nvml
        pidset = set(pids)
        gpus = []
        for i, h in enumerate(self.handles):
            mem = _guard(n.nvmlDeviceGetMemoryInfo, h)
            util = _guard(n.nvmlDeviceGetUtilizationRates, h)
            power = _guard(n.nvmlDeviceGetPowerUsage, h)
            temp = _guard(n.nvmlDeviceGetTemperature, h, getattr(n, "NVML_TEMPERATURE_GPU", 0))
            gpus.append({
                "index": i, "name": self.names[i],
                "mem_used": getattr(mem, "used", None), "mem_total": getattr(mem, "total", None),
                "util": getattr(util, "gpu", None), "temp": temp,
                "power_w": round(power / 1000.0, 1) if isinstance(power, (int, float)) else None,
                "proc_mem": self._proc_mem(h, pidset),
            })
        return {"t": round(time.time(), 3), "available": True, "reason": None, "gpus": gpus,
                "host": host_sample()}

    def close(self) -> None:
        _guard(self.nvml.nvmlShutdown)


def _decode(v):
    return v.decode() if isinstance(v, bytes) else v


def open_backend() -> NvmlBackend | NoGpuBackend:
    """NVML when a driver and at least one device answer; otherwise a NoGpuBackend with the reason."""
    try:
        import pynvml as nvml
    except ImportError:
        return NoGpuBackend("nvidia-ml-py (pynvml) is not installed")
    try:
        nvml.nvmlInit()
    except Exception as e:
        name = type(e).__name__
        if "LibraryNotFound" in name:
            return NoGpuBackend("no NVIDIA driver library (libnvidia-ml.so not found)")
        if "DriverNotLoaded" in name:
            return NoGpuBackend("NVIDIA driver not loaded")
        if "NoPermission" in name:
            return NoGpuBackend("no permission to query the NVIDIA driver")
        return NoGpuBackend(f"NVML init failed: {e}")
    count = _guard(nvml.nvmlDeviceGetCount, default=0) or 0
    if count == 0:
        _guard(nvml.nvmlShutdown)
        return NoGpuBackend("NVML found no GPU devices")
    try:
        return NvmlBackend(nvml, count)
    except Exception as e:
        _guard(nvml.nvmlShutdown)
        return NoGpuBackend(f"NVML device query failed: {e}")


class ReplayBackend:
    """Replays recorded samples of a run (for a finished run or a test): `sample()` returns them in order."""

    def __init__(self, run_dir):
        from nanotui.runtime.rundir import RunDir
        rd = run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))
        self.samples = rd.read_gpu()
        self._i = 0
        last = self.samples[-1] if self.samples else {}
        self.available = bool(last.get("available"))
        self.reason = last.get("reason") if self.samples else "no GPU samples recorded for this run"

    def sample(self, pids: Iterable[int] = ()) -> dict:
        if not self.samples:
            return {"t": time.time(), "available": False, "reason": self.reason, "gpus": [], "host": {}}
        s = self.samples[min(self._i, len(self.samples) - 1)]
        self._i += 1
        return s

    def close(self) -> None:
        pass
