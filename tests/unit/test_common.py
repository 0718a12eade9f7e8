"""common.py: device detection, single-process init, base dir, rank-0 printing, peak-FLOPs table, usage errors."""
import subprocess
from pathlib import Path
import sys
import textwrap

import pytest
import torch

from nanochat import common
from nanochat.common import (UsageError, autodetect_device_type, compute_init, compute_mfu, format_mfu,
                             get_base_dir, get_dist_info, get_peak_flops, peak_flops_for_name, print0)
REPO_ROOT = Path(__file__).resolve().parents[2]


def test_autodetect_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert autodetect_device_type() == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert autodetect_device_type() == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert autodetect_device_type() == "cuda"


def test_compute_init_single_process_on_cpu(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    ddp, rank, local_rank, world_size, device = compute_init("cpu")
    assert (ddp, rank, local_rank, world_size, device) == (False, 0, 0, 1, torch.device("cpu"))
    assert get_dist_info() == (False, 0, 0, 1)
    # torchrun with a single process is not DDP
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert compute_init("cpu")[0] is False


def test_compute_init_rejects_unavailable_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match="cuda"):
        compute_init("cuda")
    with pytest.raises(UsageError, match="unknown device type"):
        compute_init("tpu")


def test_print0_prints_on_rank0_only(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    print0("hidden")
    monkeypatch.setenv("RANK", "0")
    print0("shown", 3)
    assert capsys.readouterr().out == "shown 3\n"


def test_base_dir_from_env_is_created(tmp_path, monkeypatch):
    target = tmp_path / "a" / "b"
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(target))
    assert get_base_dir() == str(target)
    assert target.is_dir()


def test_base_dir_defaults_to_cache_under_home(tmp_path, monkeypatch):
    monkeypatch.delenv("NANOCHAT_BASE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert get_base_dir() == str(tmp_path / ".cache" / "nanochat")
    assert (tmp_path / ".cache" / "nanochat").is_dir()


def test_base_dir_that_cannot_be_created_is_a_usage_error(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(blocker / "nanochat"))
    with pytest.raises(UsageError) as info:
        get_base_dir()
    message = str(info.value)
    assert "NANOCHAT_BASE_DIR" in message and str(blocker) in message and "\n" not in message


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA GeForce RTX 4090", 165.2e12),
    ("NVIDIA GeForce RTX 3090", 71e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA A100 80GB PCIe", 312e12),
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA L4", 121e12),
    ("NVIDIA L40S", 362e12),
    ("NVIDIA A10", 125e12),
    # unknown or different parts: never a guess
    ("NVIDIA GeForce RTX 4090 D", None),
    ("NVIDIA GeForce RTX 4090 Laptop GPU", None),
    ("NVIDIA GeForce RTX 4080", None),
    ("NVIDIA A10G", None),
    ("NVIDIA H20", None),
    ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", None),
    ("Tesla T4", None),
    ("", None),
])
def test_peak_flops_table(name, peak):
    assert peak_flops_for_name(name) == peak


def test_get_peak_flops_uses_the_card_in_use(monkeypatch):
    assert get_peak_flops("cpu") is None
    assert get_peak_flops(torch.device("mps")) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce RTX 4090")
    assert get_peak_flops("cuda") == 165.2e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Mystery 9000")
    assert get_peak_flops("cuda:0") is None


def test_mfu_helpers():
    assert compute_mfu(3.491758e9, 10_000, None) is None
    mfu = compute_mfu(3.491758e9, 10_000, 165.2e12)
    assert mfu == pytest.approx(100 * 3.491758e13 / 165.2e12)
    assert compute_mfu(1e9, 1000, 1e12, world_size=2) == pytest.approx(50.0)
    assert format_mfu(None) == "n/a"
    assert format_mfu(21.13666) == "21.14"


def run_snippet(code):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=60)


def error_lines(stderr):
    """stderr lines that are ours (torch may print an unrelated NumPy warning at import)."""
    return [line for line in stderr.splitlines() if "error" in line.lower() and "numpy" not in line.lower()]


def test_run_main_turns_usage_error_into_one_line_and_exit_2():
    result = run_snippet("""
        from nanochat.common import UsageError, run_main
        def main():
            print("started")
            raise UsageError("device_batch_size must be positive,\\n  got -1")
        run_main(main)
    """)
    assert result.returncode == 2
    assert error_lines(result.stderr) == ["error: device_batch_size must be positive, got -1"]
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in result.stderr
    assert result.stdout == "started\n"


def test_run_main_routes_argparse_errors_and_passes_exit_codes():
    result = run_snippet("""
        from nanochat.common import ArgumentParser, run_main
        def main():
            parser = ArgumentParser()
            parser.add_argument("--depth", type=int, default=20)
            parser.parse_args(["--depht=4"])
        run_main(main)
    """)
    assert result.returncode == 2
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and errors[0].startswith("error: unrecognized arguments: --depht=4")
    assert "usage:" not in result.stderr and "Traceback" not in result.stderr
    assert run_snippet("from nanochat.common import run_main; run_main(lambda: 3)").returncode == 3
    assert run_snippet("from nanochat.common import run_main; run_main(lambda: None)").returncode == 0


def test_module_docstring_and_usage_error_type():
    assert common.__doc__ and "\n" not in common.__doc__.strip()
    assert issubclass(UsageError, Exception)


def test_argument_parser_accepts_torchruns_separator():
    """`torchrun ... -m module -- --flags` hands the script a leading `--`; every stage parser must accept it."""
    p = common.ArgumentParser(prog="x")
    p.add_argument("-i", dest="source")
    p.add_argument("--model_tag")
    ns = p.parse_args(["--", "-i", "mid", "--model_tag=demo"])
    assert (ns.source, ns.model_tag) == ("mid", "demo")
    with pytest.raises(UsageError, match="unrecognized arguments: --bogus"):
        p.parse_args(["--", "--bogus"])


def test_run_main_turns_ctrl_c_into_one_line_and_exit_130():
    code = textwrap.dedent("""
        from nanochat.common import run_main
        def main():
            raise KeyboardInterrupt
        run_main(main)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 130
    assert "Traceback" not in out.stderr and out.stderr.strip().splitlines()[-1] == "interrupted"
