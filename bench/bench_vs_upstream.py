"""Benchmark: upstream karpathy/nanochat beside ours, same shape, same data, alternating runs; median ratio last.

    python bench/bench_vs_upstream.py /path/to/nanochat.git [--rev f1683c5] [--shape bench|cpu-demo] [--pairs 3]
        [--steps 20] [--work_dir DIR] [--upstream_python PY]

The first argument is a git directory (bare clone, mirror or `.git`) of a karpathy/nanochat snapshot. Upstream is
exported from it with `git archive` (never edited, never imported here) and run as its own `scripts.base_train` on
the CPU; ours runs as `nanochat.scripts.base_train` with the same flags and its default `--compile auto`.

Shapes: `bench` = d4, vocab 65,536, seq 512, device batch 1, total batch 512 (the throughput comparison of issue
11); `cpu-demo` = d2, vocab 4,096, seq 256, device batch 8, total batch 8,192 (speedrun.sh PROFILE=cpu-demo).
Both read the same parquet shards (our offline demo corpus, built once under --work_dir); each trains its own
tokenizer of the shape's vocabulary on them with its own tok_train.

The metric is the one both training loops print the same way: the `dt` of each `step N/M` line, i.e. the wall time
of one optimizer step (forward, backward, optimizer) after a device sync; per run the median over steps >= 3, which
leaves out upstream's compile warm-up (steps 0-2) exactly as it leaves out ours. Upstream 2025-11 always compiles;
ours compiles by its --compile rule (auto: CUDA, or >= 2000 CPU steps), so this 20-step run is eager. Whole-process
wall times (compile, evaluation and checkpoint included) are printed beside, as a second view.

Each pair runs both once, upstream first in odd pairs and ours first in even pairs (drift cancels). Output: one
line per run, one per pair with the ratio upstream_dt / ours_dt (> 1: ours is faster), and last
`median ratio upstream/ours = R (pairs: ...)`.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEP_RE = re.compile(r"^step (\d+)/(\d+) .*?\| dt: ([\d.]+)ms")
SHAPES = {
    "bench": dict(depth=4, vocab=65536, seq=512, bs=1, total=512, corpus_mb=48.0),
    "cpu-demo": dict(depth=2, vocab=4096, seq=256, bs=8, total=8192, corpus_mb=16.0),
}
UPSTREAM_DEPS = ["tiktoken", "rustbpe", "pyarrow", "wandb", "psutil", "tokenizers", "numpy", "filelock", "pyyaml",
                 "jinja2", "requests"]


def log(msg):
    print(f"[bench_vs_upstream] {msg}", flush=True)


def fail(msg):
    print(f"error: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def run(cmd, cwd=None, env=None, logfile=None):
    """Run a command; its output goes to logfile (or is captured). Returns (exit code, output text, seconds)."""
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if logfile:
        Path(logfile).write_text(proc.stdout)
    return proc.returncode, proc.stdout, time.time() - t0


def load_average():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


# ---------------------------------------------------------------------------------------------------------------------
# one-time preparation

def export_upstream(git_dir: Path, rev: str, work: Path) -> Path:
    code, out, _ = run(["git", f"--git-dir={git_dir}", "rev-parse", "--short=7", f"{rev}^{{commit}}"])
    if code != 0:
        fail(f"{git_dir} is not a git directory holding revision {rev!r} of karpathy/nanochat "
             f"({' '.join(out.split())[:200]})")
    sha = out.strip()
    src = work / f"upstream_src_{sha}"
    if not (src / "scripts" / "base_train.py").exists():
        log(f"exporting upstream {rev} ({sha}) into {src}")
        src.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", f"--git-dir={git_dir}", "archive", sha], stdout=subprocess.PIPE, check=True)
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    if "argparse" in (src / "scripts" / "base_train.py").read_text():
        fail(f"revision {rev} uses the 2026 argparse CLI; this benchmark drives the 2025-11 configurator CLI "
             f"(use --rev f1683c5)")
    return src


def upstream_python(work: Path, given: str) -> str:
    if given:
        return given
    venv = work / "upstream_venv"
    py = venv / "bin" / "python"
    if not py.exists():
        import torch
        version = torch.__version__.split("+")[0]
        log(f"creating {venv} (torch=={version} and upstream's dependencies)")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", f"torch=={version}", *UPSTREAM_DEPS], check=True)
    return str(py)


def prepare_data(work: Path, shape: dict, src: Path, up_py: str):
    """Shared shards; ours and upstream's tokenizer each in its own base dir. Returns (ours_base, upstream_base)."""
    corpus = work / f"corpus_{shape['corpus_mb']:g}mb"
    if not (corpus / "demo_corpus.json").exists():
        log(f"building the offline demo corpus ({shape['corpus_mb']:g} MB) in {corpus}")
        code, out, _ = run([sys.executable, "-c", "import sys; from nanochat.dataset import build_demo_corpus; "
                            "build_demo_corpus(sys.argv[1], max_mb=float(sys.argv[2]))", str(corpus),
                            str(shape["corpus_mb"])], cwd=REPO)
        if code != 0:
            fail(f"building the demo corpus failed: {out[-500:]}")
    ours, up = work / f"ours_v{shape['vocab']}", work / f"upstream_v{shape['vocab']}"
    for base in (ours, up):
        base.mkdir(parents=True, exist_ok=True)
        if not (base / "base_data").exists():
            os.symlink(corpus, base / "base_data")
    if not (ours / "tokenizer" / "token_bytes.pt").exists():
        log(f"training our tokenizer (vocab {shape['vocab']:,})")
        code, out, _ = run([sys.executable, "-m", "nanochat.scripts.tok_train", f"--vocab_size={shape['vocab']}"],
                           cwd=REPO, env=dict(os.environ, NANOCHAT_BASE_DIR=str(ours)))
        if code != 0:
            fail(f"our tok_train failed: {out[-500:]}")
    if not (up / "tokenizer" / "token_bytes.pt").exists():
        log(f"training upstream's tokenizer (vocab {shape['vocab']:,})")
        code, out, _ = run([up_py, "-m", "scripts.tok_train", f"--vocab_size={shape['vocab']}"], cwd=src,
                           env=dict(os.environ, NANOCHAT_BASE_DIR=str(up), WANDB_MODE="disabled"))
        if code != 0:
            fail(f"upstream tok_train failed: {out[-500:]}")
    return ours, up


# ---------------------------------------------------------------------------------------------------------------------
# one run of each

def shape_flags(shape, steps):
    return [f"--depth={shape['depth']}", f"--max_seq_len={shape['seq']}", f"--device_batch_size={shape['bs']}",
            f"--total_batch_size={shape['total']}", f"--num_iterations={steps}", "--core_metric_every=-1",
            "--run=dummy", "--device_type=cpu"]


def parse_steps(text):
    return {int(m.group(1)): float(m.group(3)) for line in text.splitlines() if (m := STEP_RE.match(line.strip()))}


def vocab_line(text):
    m = re.search(r"^Vocab size: ([\d,]+)", text, re.M)
    return m.group(1) if m else "?"


def run_one(who, shape, steps, src, up_py, ours_base, up_base, logdir, index):
    tag = f"bvu_{who}"
    if who == "upstream":
        # 2025-11 base_train cannot switch evaluation off (eval_every=-1 evaluates every step): evaluate at step 0 and
        # at the end on one batch, sample only at the end; all of it outside the timed steps
        cmd = [up_py, "-m", "scripts.base_train", *shape_flags(shape, steps), f"--eval_every={steps}",
               f"--eval_tokens={shape['bs'] * shape['seq']}", f"--sample_every={steps}", f"--model_tag={tag}"]
        cwd, base = src, up_base
    else:
        cmd = [sys.executable, "-m", "nanochat.scripts.base_train", *shape_flags(shape, steps), "--eval_every=-1",
               "--sample_every=-1", "--save_every=-1", f"--model_tag={tag}"]
        cwd, base = REPO, ours_base
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(base), WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    load = load_average()
    code, out, wall = run(cmd, cwd=cwd, env=env, logfile=logdir / f"{index:02d}_{who}.log")
    shutil.rmtree(base / "base_checkpoints" / tag, ignore_errors=True)  # upstream's d4 checkpoint is ~430 MB
    dts = parse_steps(out)
    warm = [dt for step, dt in dts.items() if step >= 3]
    if code != 0 or not warm:
        fail(f"{who} run failed (exit {code}); log: {logdir / f'{index:02d}_{who}.log'}: "
             f"{' '.join(out.split())[-300:]}")
    median = statistics.median(warm)
    log(f"run {index}: {who:8s} median dt {median:8.1f} ms over {len(warm)} steps (step 0: {dts.get(0, 0):.0f} ms) "
        f"| wall {wall:6.1f} s | vocab {vocab_line(out)} | load avg before {load:.1f}")
    return median, wall


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("upstream", type=Path, help="git directory of a karpathy/nanochat snapshot")
    p.add_argument("--rev", default="f1683c5", help="upstream revision (2025-11 configurator CLI)")
    p.add_argument("--shape", choices=sorted(SHAPES), default="bench")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--work_dir", type=Path, default=Path.home() / ".cache" / "nanotui-bench-vs-upstream")
    p.add_argument("--upstream_python", default="", help="a python with upstream's deps (default: a venv in work_dir)")
    args = p.parse_args(argv)
    if args.pairs < 1 or args.steps < 5:
        fail("--pairs must be >= 1 and --steps >= 5 (the median is over steps >= 3)")
    if not args.upstream.is_dir():
        fail(f"{args.upstream} is not a directory: pass the git directory of a karpathy/nanochat snapshot")
    shape = SHAPES[args.shape]
    work = args.work_dir.expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    src = export_upstream(args.upstream.resolve(), args.rev, work)
    up_py = upstream_python(work, args.upstream_python)
    ours_base, up_base = prepare_data(work, shape, src, up_py)
    logdir = work / "logs" / time.strftime("%Y%m%d-%H%M%S")
    logdir.mkdir(parents=True, exist_ok=True)
    log(f"shape {args.shape}: {shape} | {args.steps} steps | {args.pairs} pairs | {os.cpu_count()} CPUs | "
        f"logs in {logdir}")
    ratios, walls = [], []
    index = 0
    for pair in range(1, args.pairs + 1):
        order = ("upstream", "ours") if pair % 2 else ("ours", "upstream")
        result = {}
        for who in order:
            index += 1
            result[who] = run_one(who, shape, args.steps, src, up_py, ours_base, up_base, logdir, index)
        ratio = result["upstream"][0] / result["ours"][0]
        wall_ratio = result["upstream"][1] / result["ours"][1]
        ratios.append(ratio)
        walls.append(wall_ratio)
        log(f"pair {pair}: upstream {result['upstream'][0]:.1f} ms, ours {result['ours'][0]:.1f} ms -> "
            f"ratio upstream/ours {ratio:.3f} (whole-run wall time ratio {wall_ratio:.2f})")
    print(f"median whole-run wall time ratio upstream/ours = {statistics.median(walls):.2f}", flush=True)
    print(f"median ratio upstream/ours = {statistics.median(ratios):.3f} "
          f"(pairs: {', '.join(f'{r:.3f}' for r in ratios)})", flush=True)


if __name__ == "__main__":
    main()
