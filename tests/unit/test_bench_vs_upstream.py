"""bench/bench_vs_upstream.py: the step-line parsing both trainers share, and bad input (one line, exit 2)."""
import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "bench_vs_upstream.py"


def load():
    spec = importlib.util.spec_from_file_location("bench_vs_upstream", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_lines_of_upstream_and_ours_parse_alike():
    bench = load()
    upstream = ("step 00003/00020 (15.00%) | loss: 9.123456 | lrm: 1.00 | dt: 581.25ms | tok/sec: 880 | mfu: 0.00 | "
                "total time: 0.00m")
    ours = ("step 00004/00020 (20.00%) | loss: 9.012345 | lrm: 1.00 | dt: 512.50ms | tok/sec: 999 | mfu: n/a | "
            "total time: 0.00m")
    text = "\n".join(["Vocab size: 65,536", upstream, "Step 00020 | Validation bpb: 3.2100", ours])
    assert bench.parse_steps(text) == {3: 581.25, 4: 512.5}
    assert bench.vocab_line(text) == "65,536"


def test_not_a_snapshot_is_one_line_and_exit_2(tmp_path):
    for argv in ([str(tmp_path / "missing")], [str(tmp_path), f"--work_dir={tmp_path / 'w'}"]):
        proc = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "karpathy/nanochat" in lines[0]
