"""Benchmark: trainer tok/s bare vs under the supervisor with an attached client (alternating), parser lines/s, supervisor RSS.

    python bench/bench_supervisor.py [--rounds 3] [--iters 30] [--trainer real|fake] [--parse-steps 250000]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "fixtures"))

from nanotui.core.logparse import LogParser  # noqa: E402
from nanotui.runtime.control import ControlClient, ControlError  # noqa: E402
from nanotui.runtime.rundir import RunDir  # noqa: E402
from nanotui.runtime.supervisor import spawn_supervisor  # noqa: E402
from nanotui.runtime.tail import LogTailer  # noqa: E402

TOK_RE = re.compile(r"^step (\d+).*?\| dt: ([\d.]+)ms \| tok/sec: ([\d,]+)", re.M)


def trainer_argv(kind: str, iters: int) -> list[str]:
    if kind == "fake":
        return [sys.executable, str(REPO / "tests/fixtures/fake_trainer.py"), "--device_batch_size=8",
                f"--num_iterations={iters}", "--save_every=0", "--step_time=0.05"]
    return [sys.executable, "-m", "nanochat.scripts.base_train", "--depth=2", "--max_seq_len=256",
            "--device_batch_size=8", "--total_batch_size=8192", f"--num_iterations={iters}", "--eval_every=-1",
            "--core_metric_every=-1", "--sample_every=-1", "--save_every=-1", "--model_tag=bench", "--run=dummy"]


def median_tok_s(text: str, skip: int = 3) -> float:
    vals = [float(m.group(3).replace(",", "")) for m in TOK_RE.finditer(text)]
    vals = vals[skip:] or vals
    if not vals:
        raise RuntimeError("no step lines in the trainer output:\n" + text[-1500:])
    return statistics.median(vals)


def run_bare(argv, base: Path, log: Path) -> float:
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(base), PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    with open(log, "wb") as f:
        subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO, check=True)
    return median_tok_s(log.read_text())


def run_supervised(argv, base: Path) -> tuple[float, float]:
    """Returns (median tok/s, max supervisor RSS MiB) with one client subscribed and polling status at 1 Hz."""
    os.environ["NANOCHAT_BASE_DIR"] = str(base)
    stage = {"name": "base_train", "argv": argv, "env": {}, "trains": True, "device_bs": 8, "log_kind": "base"}
    rd = RunDir.create(base, {"profile": "bench", "base_dir": str(base), "cwd": str(REPO), "grace": 0,
                              "stages": [stage]})
    sup = spawn_supervisor(rd)
    done = threading.Event()

    def client():  # an attached client: notifications + status polls + following the log
        while not done.is_set():
            try:
                c = ControlClient(rd, timeout=2)
                for _ in c.subscribe(timeout=1.0):
                    c.request("status")
                    if done.is_set():
                        return
            except (ControlError, OSError):
                time.sleep(0.2)

    def follower():
        t = None
        while not done.is_set():
            log = rd.current_log()
            if log and t is None:
                t = LogTailer(log)
            if t:
                t.read_lines()
            time.sleep(0.25)

    threads = [threading.Thread(target=client, daemon=True), threading.Thread(target=follower, daemon=True)]
    [t.start() for t in threads]
    rss = 0.0
    p = psutil.Process(sup.pid)
    try:
        while sup.poll() is None:
            try:
                rss = max(rss, p.memory_info().rss / 2**20)
            except psutil.Error:
                pass
            time.sleep(0.2)
    finally:  # the supervisor is detached by design: stop it if the bench is interrupted
        done.set()
        if sup.poll() is None:
            try:
                ControlClient(rd, timeout=5).request("stop")
                sup.wait(60)
            except (ControlError, OSError, subprocess.TimeoutExpired):
                sup.kill()
    if rd.read_state()["phase"] != "done":
        raise RuntimeError(f"supervised run failed: {rd.read_state().get('reason')}")
    return median_tok_s(rd.list_logs()[-1].read_text()), rss


def bench_parser(steps: int) -> tuple[float, int]:
    lines = []
    for s in range(1, steps + 1):
        lines.append(f"step {s:05d}/{steps} ({100 * s / steps:.2f}%) | loss: 3.{s % 999999:06d} | lrm: 1.00 | "
                     f"dt: 1234.56ms | tok/sec: 424,672 | mfu: 45.67 | total time: {s / 60:.2f}m")
        if s % 250 == 0:
            lines.append(f"Step {s:05d} | Validation bpb: 0.{s % 9999:04d}")
        if s % 1000 == 0:
            lines.append(f"Checkpoint saved: step {s:06d} -> /tmp/ckpt")
    text = "\n".join(lines) + "\n"
    data = text.encode()
    best = 0.0
    for _ in range(3):
        parser = LogParser(kind="base")
        t0 = time.perf_counter()
        n = 0
        for i in range(0, len(data), 1 << 16):
            n += len(parser.feed(data[i:i + (1 << 16)]))
        dt = time.perf_counter() - t0
        best = max(best, len(lines) / dt)
    return best, len(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--trainer", choices=("real", "fake"), default="real")
    ap.add_argument("--parse-steps", type=int, default=250_000)
    a = ap.parse_args()

    rate, n = bench_parser(a.parse_steps)
    print(f"parser: {n:,} lines ({a.parse_steps:,} steps) at {rate:,.0f} lines/s (best of 3, 64 KiB chunks)")

    with tempfile.TemporaryDirectory(prefix="nanotui-bench-") as tmp:
        base = Path(tmp)
        argv = trainer_argv(a.trainer, a.iters)
        if a.trainer == "real":  # prepare demo data + tokenizer once
            env = dict(os.environ, NANOCHAT_BASE_DIR=str(base), PYTHONPATH=str(REPO))
            for prep in (["-m", "nanochat.dataset", "--demo"],
                         ["-m", "nanochat.scripts.tok_train", "--vocab_size=4096", "--max_chars=20000000"]):
                subprocess.run([sys.executable, *prep], env=env, cwd=REPO, check=True, capture_output=True)
        bare, sup, rss = [], [], []
        for r in range(a.rounds):
            bare.append(run_bare(argv, base, base / f"bare{r}.log"))
            s, m = run_supervised(argv, base)
            sup.append(s)
            rss.append(m)
            print(f"round {r + 1}: bare {bare[-1]:,.0f} tok/s, supervised+client {sup[-1]:,.0f} tok/s "
                  f"(ratio {sup[-1] / bare[-1]:.3f}), supervisor RSS {m:.1f} MiB")
        ratios = [s / b for s, b in zip(sup, bare)]
        print(f"trainer ({a.trainer}, {a.iters} iters, first 3 steps excluded): median bare "
              f"{statistics.median(bare):,.0f} tok/s, supervised {statistics.median(sup):,.0f} tok/s, "
              f"median ratio {statistics.median(ratios):.3f} (target >= 0.99)")
        print(f"supervisor RSS: median of max {statistics.median(rss):.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
