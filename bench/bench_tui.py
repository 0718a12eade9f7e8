"""TUI benchmark: first full paint attaching to a 250,000-step run, client RSS, idle CPU while attached to a live run.

Usage: python bench/bench_tui.py [--steps 250000] [--idle-seconds 20] [--repeats 3] [--baseline SRC]
Each measurement runs in a fresh child process (a real client: import, attach, paint) so numbers are not
warmed by earlier runs. Prints medians and the targets (first paint <= 1 s, RSS <= 150 MB, idle CPU <= 2 %).
The live run appends one step line and one GPU sample per second, like a supervisor at gpu_interval=1.
`--baseline SRC` (a directory holding another copy of the `nanotui` package) alternates idle measurements
between SRC and this checkout in the same run, for before/after comparisons.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "fixtures"))
sys.path.insert(0, str(REPO))

CHILD = r"""
import asyncio, json, os, sys, threading, time
t0 = time.perf_counter()
import psutil
from nanotui.tui.app import NanotuiApp
run_dir, mode, idle_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
proc = psutil.Process()

async def main():
    app = NanotuiApp(run_dir=run_dir, poll_interval=1.0, theme="textual-dark")
    out = {}
    async with app.run_test(size=(160, 48)) as pilot:
        while app.painted_at is None:
            await asyncio.sleep(0.002)
        out["first_paint_s"] = app.painted_at - t0  # the frame with the first snapshot was rendered
        while app.history_at is None:
            await asyncio.sleep(0.02)
        await pilot.pause()
        out["history_s"] = time.perf_counter() - t0
        out["chart_points"] = len(app.snapshot.chart.line)
        if mode == "idle":
            log = os.path.join(run_dir, "logs", "02-base_train-a1.log")
            gpu = os.path.join(run_dir, "gpu.jsonl")
            with open(gpu, "rb") as f:
                sample = json.loads(f.readlines()[-1])
            stop = threading.Event()
            def grow():  # a live run: one step line and one GPU sample per second
                i = 10**6
                while not stop.wait(1.0):
                    with open(log, "a") as f:
                        f.write(f"step {i:05d}/{2*10**6} (50.00%) | loss: 3.300000 | lrm: 1.00 | dt: 1000.00ms | "
                                f"tok/sec: 8,192 | mfu: 31.50 | total time: 1.00m\n")
                    sample["t"] = time.time()
                    with open(gpu, "a") as f:
                        f.write(json.dumps(sample) + "\n")
                    i += 1
            th = threading.Thread(target=grow, daemon=True); th.start()
            await asyncio.sleep(2.0)
            c0, w0 = proc.cpu_times(), time.perf_counter()
            await asyncio.sleep(idle_s)
            c1, w1 = proc.cpu_times(), time.perf_counter()
            stop.set()
            # the writer thread's own cost is a few microseconds per second; it is included (conservative)
            out["idle_cpu_pct"] = 100.0 * ((c1.user - c0.user) + (c1.system - c0.system)) / (w1 - w0)
            out["steps_seen"] = app.snapshot.metrics.step
        out["rss_mb"] = proc.memory_info().rss / 2**20
    print("RESULT " + json.dumps(out))

asyncio.run(main())
"""


def child(run_dir: Path, mode: str, idle_s: float, src: Path = REPO) -> dict:
    """One measurement in a fresh interpreter importing `nanotui` from `src`."""
    res = subprocess.run([sys.executable, "-c", CHILD, str(run_dir), mode, str(idle_s)], capture_output=True,
                         text=True, cwd=str(src), env={**os.environ, "PYTHONPATH": str(src)})
    for line in res.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise SystemExit(f"error: benchmark child failed:\n{res.stderr[-2000:]}")


def export_screenshot(target: Path) -> None:
    """docs/screenshot.svg: the dashboard on the recorded mid-training run at 160x48 (fixed clock)."""
    import asyncio
    import json as _json
    import make_runs
    from nanotui.tui.app import NanotuiApp

    async def shoot(run_dir: Path, base: Path, now: float) -> str:
        app = NanotuiApp(run_dir=run_dir, base_dir=base, clock=lambda: now, poll_interval=None, theme="textual-dark")
        async with app.run_test(size=(160, 48)) as pilot:
            while not (app.snapshot and app.snapshot.history_loaded):
                await pilot.pause(0.05)
            await pilot.pause(0.1)
            return app.export_screenshot(title="nanotui — cpu-demo mid-training")

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "nanochat"
        run_dir = make_runs.install("mid_training", base)
        now = _json.loads((run_dir / "state.json").read_text())["updated"] + 20
        svg = asyncio.run(shoot(run_dir, base, now)).replace(str(base), "~/.cache/nanochat")
    target.write_text(svg)
    print(f"wrote {target}")


def compare(baseline: Path, steps: int, idle_s: float, repeats: int) -> int:
    """Idle CPU of `baseline` and this checkout, alternating, each child on a fresh copy of the recorded run."""
    import make_runs
    results: dict[str, list[float]] = {"baseline": [], "current": []}
    with tempfile.TemporaryDirectory() as tmp:
        pristine = make_runs.write_big_run(Path(tmp) / "base", steps)
        for i in range(repeats):
            for label, src in (("baseline", baseline), ("current", REPO)):
                work = Path(tmp) / f"run-{label}-{i}"
                shutil.copytree(pristine.parents[1], work)
                idle = child(work / "runs" / pristine.name, "idle", idle_s, src)
                results[label].append(idle["idle_cpu_pct"])
                print(f"  round {i + 1} {label:8s}: idle CPU {idle['idle_cpu_pct']:.2f}%  RSS {idle['rss_mb']:.0f} MB  "
                      f"(last step seen {idle['steps_seen']})", flush=True)
                shutil.rmtree(work)
    for label, vals in results.items():
        print(f"idle CPU {label} ({baseline if label == 'baseline' else REPO}): median {statistics.median(vals):.2f}% "
              f"of one core over {len(vals)} x {idle_s:.0f}s  [{', '.join(f'{v:.2f}' for v in vals)}]")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=250_000)
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--screenshot", type=Path, help="only export the README screenshot SVG to this path")
    ap.add_argument("--baseline", type=Path, help="a directory with another `nanotui` package: alternate idle "
                    "measurements between it and this checkout")
    a = ap.parse_args()
    if a.screenshot:
        export_screenshot(a.screenshot)
        return 0
    if a.baseline and not (a.baseline / "nanotui" / "tui" / "app.py").is_file():
        print(f"error: --baseline {a.baseline} holds no nanotui/tui/app.py; pass the directory above the package",
              file=sys.stderr)
        return 2
    if a.baseline:
        return compare(a.baseline, a.steps, a.idle_seconds, a.repeats)
    import make_runs
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        run_dir = make_runs.write_big_run(Path(tmp) / "base", a.steps)
        size = sum(p.stat().st_size for p in (run_dir / "logs").iterdir())
        print(f"recorded run: {a.steps:,} step lines, logs {size / 2**20:.1f} MiB (written in {time.perf_counter() - t:.1f}s)")
        paints = [child(run_dir, "paint", 0) for _ in range(a.repeats)]
        idle = child(run_dir, "idle", a.idle_seconds)
    fp = statistics.median(p["first_paint_s"] for p in paints)
    hist = statistics.median(p["history_s"] for p in paints)
    rss = max(max(p["rss_mb"] for p in paints), idle["rss_mb"])
    print(f"first full paint (process start -> dashboard painted): median {fp:.3f}s over {a.repeats}  "
          f"target <= 1.0s  {'OK' if fp <= 1.0 else 'MISS'}")
    print(f"whole-run history loaded in background: median {hist:.3f}s ({paints[0]['chart_points']} chart buckets)")
    print(f"client RSS (max): {rss:.1f} MB  target <= 150 MB  {'OK' if rss <= 150 else 'MISS'}")
    print(f"idle CPU attached to a live run ({a.idle_seconds:.0f}s, 1 step + 1 GPU sample/s): "
          f"{idle['idle_cpu_pct']:.2f}% of one core  "
          f"target <= 2%  {'OK' if idle['idle_cpu_pct'] <= 2 else 'MISS'}  (last step seen {idle['steps_seen']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
