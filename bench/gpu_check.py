"""One GPU check of the CUDA paths in under 10 minutes (bench/gpu_check.sh runs it): each stage for real, its peak
allocated memory beside the VRAM predictor, tok/s, MFU, compiled and eager; the probe; a real CUDA OOM recovered by
the supervisor, which samples the card through NVML. Prints one table and its own time accounting.

    bash bench/gpu_check.sh                       # on a machine with a CUDA GPU
    python bench/gpu_check.py --smoke             # the same phases on a CPU, tiny (tests the check itself)

Env: GPU_CHECK_BASE (keep the corpus and tokenizer there and reuse them next time), GPU_CHECK_DEPTH (12),
GPU_CHECK_BUDGET_S (600), GPU_CHECK_REPORT (also write the results as JSON there).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nanotui.core.vram import (GIB, Assumptions, ModelShape, accumulation, allocated_bytes,  # noqa: E402
                               device_bytes, training_terms)

# each phase's share of the 600 s (sum 590): a phase past its share is stopped and fails; none takes another's time
PHASE_LIMITS = {"corpus+tok": 90, "base_compiled": 110, "base_eager": 50, "mid_compiled": 100, "sft_eager": 60,
                "probe": 100, "oom": 80}
STEP = re.compile(r"^step (\d+)/\d+ .*\| tok/sec: ([\d,]+) \| mfu: (n/a|[\d.]+) \|", re.M)
SFT_STEP = re.compile(r"^Step (\d+)/\d+ \| Training loss", re.M)   # chat_sft keeps upstream's line: no tok/s
PEAK = re.compile(r"^Peak memory usage: ([\d.]+)MiB$", re.M)
VOCAB = re.compile(r"^Vocab size: ([\d,]+)$", re.M)
PROBE = re.compile(r"^Device batch probe: device_batch_size=(\d+) .* -> (.+)$", re.M)
CHOSEN = re.compile(r"^Device batch size auto: (\d+)", re.M)
OOM_LINE = re.compile(r"^OOM: CUDA out of memory at device_batch_size=(\d+), step (\d+); emergency checkpoint: (.+)$",
                      re.M)


# ---------------------------------------------------------------------------------------------- pure parts (tested)
def parse_stage_log(text: str, skip: int = 2) -> dict:
    """Peak allocated (GiB), median tok/s and MFU over the steps after `skip` warm-up steps, step count, vocab.
    chat_sft's upstream-style step lines carry no tok/s or MFU (None then)."""
    steps = [(int(s), int(t.replace(",", "")), m) for s, t, m in STEP.findall(text)]
    timed = steps[skip:] or steps
    mfus = [float(m) for _, _, m in timed if m != "n/a"]
    peak, vocab = PEAK.findall(text), VOCAB.findall(text)
    return {"steps": len(steps) or len(SFT_STEP.findall(text)),
            "peak_gib": float(peak[-1]) / 1024 if peak else None,
            "tok_s": statistics.median(t for _, t, _ in timed) if timed else None,
            "mfu": statistics.median(mfus) if mfus else None,
            "vocab": int(vocab[-1].replace(",", "")) if vocab else None}


def predicted_gib(depth: int, vocab: int, seq_len: int, device_bs: int, total: int, *, compiled: bool,
                  sequences: bool = False, cuda: bool = True) -> tuple:
    """(allocated GiB, reserved GiB) the predictor gives a training micro-step of this stage on one device."""
    a = Assumptions(compiled=compiled, cuda=cuda)
    accum = accumulation(total, device_bs, 1 if sequences else seq_len)
    terms = training_terms(ModelShape(depth, vocab, seq_len), device_bs, a, accum)
    return allocated_bytes(terms) / GIB, device_bytes(terms, a) / GIB


@dataclass
class Row:
    stage: str
    compiled: bool
    batch: str
    ok: bool = False
    peak_gib: Optional[float] = None
    predicted_gib: Optional[float] = None
    tok_s: Optional[float] = None
    mfu: Optional[float] = None
    seconds: float = 0.0
    note: str = ""

    @property
    def ratio(self) -> Optional[float]:
        return self.predicted_gib / self.peak_gib if self.peak_gib and self.predicted_gib else None


def _f(v, fmt):
    width = int(re.match(r"\d+", fmt).group(0))
    return format(v, fmt) if isinstance(v, (int, float)) else "n/a".rjust(width)


def format_table(rows: list) -> list:
    """The one table: per stage, peak allocated vs predicted, tok/s, MFU, compile on/off, time, result."""
    head = (f"{'stage':<14} {'compile':<7} {'batch':<16} {'peak GiB':>8} {'pred GiB':>8} {'pred/meas':>9} "
            f"{'tok/s':>9} {'MFU %':>6} {'time s':>6}  result")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.stage:<14} {'on' if r.compiled else 'off':<7} {r.batch:<16} {_f(r.peak_gib, '8.2f')} "
                     f"{_f(r.predicted_gib, '8.2f')} {_f(r.ratio, '9.3f')} {_f(r.tok_s, '9,.0f')} "
                     f"{_f(r.mfu, '6.2f')} {r.seconds:6.0f}  {'ok' if r.ok else 'FAIL'}{' ' + r.note if r.note else ''}")
    return lines


@dataclass
class Budget:
    """The check's own time accounting: every phase gets min(its limit, what is left of the total)."""
    total_s: float
    start: float = field(default_factory=time.monotonic)

    def used(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.total_s - self.used()

    def limit(self, phase_s: float) -> float:
        return max(0.0, min(phase_s, self.left()))


# ---------------------------------------------------------------------------------------------- running the phases
@dataclass
class Config:
    smoke: bool
    base: Path
    depth: int
    seq_len: int
    vocab: int
    corpus_mb: float
    tok_chars: int
    device_bs: int
    sft_bs: int
    steps: int
    cap_gib: Optional[float]          # the memory cap of the OOM phase (None in smoke: the fault injector instead)
    oom_bs: int

    @property
    def common(self) -> list:
        flags = [f"--depth={self.depth}", f"--max_seq_len={self.seq_len}", "--eval_every=-1",
                 "--core_metric_every=-1", "--sample_every=-1", "--run=dummy"]
        return flags + (["--device_type=cpu"] if self.smoke else [])


def make_config(smoke: bool, base: Path) -> Config:
    if smoke:
        return Config(True, base, depth=1, seq_len=64, vocab=512, corpus_mb=1.0, tok_chars=2_000_000, device_bs=4,
                      sft_bs=2, steps=4, cap_gib=None, oom_bs=4)
    text = os.environ.get("GPU_CHECK_DEPTH", "12").strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"GPU_CHECK_DEPTH must be a positive integer, got {text!r}")
    depth = int(text)
    # d12 at T=1024, vocab ~64k, eager: the predictor puts B=32 at ~47 GiB and B=16 at ~25 GiB, so under a 32 GiB
    # cap B=32 runs out of memory for real and the ladder's B=16 fits
    return Config(False, base, depth=depth, seq_len=1024, vocab=65536, corpus_mb=8.0, tok_chars=8_000_000,
                  device_bs=16, sft_bs=4, steps=12, cap_gib=32.0, oom_bs=32)


def _env(cfg: Config, **extra) -> dict:
    # the repo first, then whatever the caller's PYTHONPATH already holds (packages installed with --target)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(cfg.base), PYTHONPATH=path, WANDB_MODE="disabled",
               PYTHONUNBUFFERED="1")
    for k in ("NANOCHAT_FAULT_OOM_ABOVE_BS", "NANOCHAT_FAULT_OOM_FROM_STEP", "NANOCHAT_CUDA_MEMORY_CAP_GIB",
              "NANOCHAT_AUTO_BS_MAX"):
        env.pop(k, None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _run(cmd: list, env: dict, timeout: float) -> tuple:
    """(exit code or 'timeout', stdout+stderr, seconds)."""
    t0 = time.monotonic()
    if timeout <= 0:
        return "timeout", "no time left in the budget", 0.0
    try:
        p = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout + p.stderr, time.monotonic() - t0
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return "timeout", out, time.monotonic() - t0


def phase_data(cfg: Config, budget: Budget) -> Row:
    """Corpus and tokenizer, built once (reused when GPU_CHECK_BASE already holds them)."""
    row = Row("corpus+tok", False, f"{cfg.corpus_mb:g} MB / vocab {cfg.vocab}")
    if (cfg.base / "tokenizer").is_dir() and (cfg.base / "base_data").is_dir():
        row.ok, row.note = True, f"reused {cfg.base}"
        return row
    t0 = time.monotonic()
    for cmd in ([sys.executable, "-m", "nanochat.dataset", "--demo", f"--max_mb={cfg.corpus_mb}"],
                [sys.executable, "-m", "nanochat.scripts.tok_train", f"--vocab_size={cfg.vocab}",
                 f"--max_chars={cfg.tok_chars}"]):
        rc, out, _ = _run(cmd, _env(cfg), budget.limit(PHASE_LIMITS["corpus+tok"] - (time.monotonic() - t0)))
        if rc != 0:
            row.note = f"{cmd[2]} exit {rc}: {out.strip().splitlines()[-1:] or ''}"
            row.seconds = time.monotonic() - t0
            return row
    row.ok, row.seconds = True, time.monotonic() - t0
    return row


def phase_train(cfg: Config, budget: Budget, stage: str, compiled: bool, tag: str, bs: int, accum: int,
                limit_s: float, extra=()) -> Row:
    """One real training stage: peak allocated vs the predictor, tok/s, MFU."""
    sequences = stage == "chat_sft"
    compile_flag = "on" if compiled and not cfg.smoke else "off"
    if sequences:
        total = bs * accum
        flags = [f"--model_tag={tag}", f"--device_batch_size={bs}", f"--target_examples_per_step={total}",
                 f"--num_iterations={cfg.steps}", f"--max_seq_len={cfg.seq_len}", "--save_every=-1", "--demo",
                 "--eval_every=-1", "--run=dummy", f"--compile={compile_flag}"]
        flags += ["--device_type=cpu"] if cfg.smoke else []
    else:
        total = bs * cfg.seq_len * accum
        flags = [*cfg.common, f"--model_tag={tag}", f"--device_batch_size={bs}", f"--total_batch_size={total}",
                 f"--num_iterations={cfg.steps}", f"--save_every={cfg.steps}", f"--compile={compile_flag}"]
        if stage == "base_train":
            flags = [f for f in flags if not f.startswith("--run")] + ["--run=dummy"]
        else:
            flags = [f for f in flags if not (f.startswith("--depth") or f.startswith("--core_metric_every")
                                              or f.startswith("--sample_every"))] + ["--demo"]
    row = Row(stage, compiled and not cfg.smoke, f"{bs}x{cfg.seq_len} acc {accum}")
    rc, out, row.seconds = _run([sys.executable, "-m", f"nanochat.scripts.{stage}", *flags, *extra], _env(cfg),
                                budget.limit(limit_s))
    got = parse_stage_log(out)
    row.peak_gib, row.tok_s, row.mfu = got["peak_gib"], got["tok_s"], got["mfu"]
    vocab = got["vocab"] or cfg.vocab
    row.predicted_gib = predicted_gib(cfg.depth, vocab, cfg.seq_len, bs, total, compiled=row.compiled,
                                      sequences=sequences, cuda=not cfg.smoke)[0]
    row.ok = rc == 0 and got["steps"] == cfg.steps
    if not row.ok:
        row.note = f"exit {rc}; {got['steps']} steps; " + " | ".join(out.strip().splitlines()[-2:])[:200]
    elif cfg.smoke:
        row.note = "cpu smoke: peak n/a off CUDA"
    return row


def phase_probe(cfg: Config, budget: Budget) -> Row:
    """--device_batch_size=auto, compiled, with the candidates bounded (NANOCHAT_AUTO_BS_MAX = twice the predicted
    choice, as the supervisor sets it): at most two compiles."""
    total = cfg.device_bs * cfg.seq_len * 4
    env_extra = {"NANOCHAT_AUTO_BS_MAX": str(cfg.device_bs * 2)}
    if cfg.cap_gib:
        env_extra["NANOCHAT_CUDA_MEMORY_CAP_GIB"] = str(cfg.cap_gib)
    else:
        env_extra["NANOCHAT_FAULT_OOM_ABOVE_BS"] = str(cfg.device_bs)
    compile_flag = "off" if cfg.smoke else "on"
    flags = [*cfg.common, "--model_tag=gcprobe", "--device_batch_size=auto", f"--total_batch_size={total}",
             "--num_iterations=3", "--save_every=-1", f"--compile={compile_flag}"]
    row = Row("probe(auto)", not cfg.smoke, f"<= {cfg.device_bs * 2}x{cfg.seq_len}")
    rc, out, row.seconds = _run([sys.executable, "-m", "nanochat.scripts.base_train", *flags],
                                _env(cfg, **env_extra), budget.limit(PHASE_LIMITS["probe"]))
    probes = PROBE.findall(out)
    chosen = CHOSEN.search(out)
    row.ok = rc == 0 and chosen is not None and 1 <= len(probes) <= 2
    row.peak_gib = parse_stage_log(out)["peak_gib"]
    row.note = (f"candidates {[int(b) for b, _ in probes]} -> {chosen.group(1) if chosen else 'none'}"
                + ("" if row.ok else f"; exit {rc}: " + " | ".join(out.strip().splitlines()[-2:])[:160]))
    return row


def phase_supervised_oom(cfg: Config, budget: Budget) -> Row:
    """A supervised base_train at a batch that cannot fit (a real CUDA OOM under the memory cap; the fault injector
    in smoke): exit 3, the ladder halves the batch, the run finishes. The supervisor samples the card via NVML."""
    from nanotui.runtime.rundir import RunDir
    from nanotui.runtime.supervisor import spawn_supervisor
    env = {"NANOCHAT_NS_DTYPE": "float32"} if cfg.smoke else {}
    if cfg.cap_gib:
        env["NANOCHAT_CUDA_MEMORY_CAP_GIB"] = str(cfg.cap_gib)
    else:
        env["NANOCHAT_FAULT_OOM_ABOVE_BS"] = str(cfg.oom_bs // 2)
    total = cfg.oom_bs * cfg.seq_len
    argv = [sys.executable, "-m", "nanochat.scripts.base_train", *cfg.common, "--model_tag=gcoom",
            f"--device_batch_size={cfg.oom_bs}", f"--total_batch_size={total}", "--num_iterations=4",
            "--save_every=2", "--compile=off"]
    stage = {"name": "base_train", "argv": argv, "env": env, "trains": True, "ckpt_subdir": "base_checkpoints/gcoom",
             "total_batch_size": total, "device_bs": cfg.oom_bs, "seq_len": cfg.seq_len, "world_size": 1,
             "num_iterations": 4, "model_tag": "gcoom", "log_kind": "base"}
    plan = {"profile": "gpu_check", "base_dir": str(cfg.base), "cwd": str(REPO), "grace": 0, "stop_timeout": 10,
            "gpu_interval": 0.5, "overrides": {}, "stages": [stage]}
    row = Row("oom->fallback", False, f"{cfg.oom_bs}->{cfg.oom_bs // 2}x{cfg.seq_len}")
    t0 = time.monotonic()
    os.environ["NANOCHAT_BASE_DIR"] = str(cfg.base)
    rd = RunDir.create(cfg.base, plan)
    sup = spawn_supervisor(rd)
    deadline = t0 + budget.limit(PHASE_LIMITS["oom"])
    try:
        while rd.read_state().get("phase") not in ("done", "failed", "stopped") or rd.supervisor_alive():
            if time.monotonic() > deadline:
                row.note = "timed out"
                break
            time.sleep(0.5)
    finally:
        if sup.poll() is None:
            sup.kill()
    row.seconds = time.monotonic() - t0
    st, evs = rd.read_state(), rd.read_events()
    falls = [(e["from_bs"], e["to_bs"]) for e in evs if e["type"] == "fallback"]
    logs = "\n".join(p.read_text() for p in rd.list_logs())
    real = [m for m in OOM_LINE.findall(logs)]
    samples = [json.loads(line) for line in rd.gpu_path.read_text().splitlines()] if rd.gpu_path.exists() else []
    nvml = [g for s in samples if s.get("available") for g in s.get("gpus") or []]
    used = max((g.get("proc_mem") or g.get("mem_used") or 0 for g in nvml), default=0)
    row.peak_gib = parse_stage_log(logs)["peak_gib"]
    row.ok = st.get("phase") == "done" and falls[:1] == [(cfg.oom_bs, cfg.oom_bs // 2)] and bool(real)
    if not cfg.smoke:
        row.ok = row.ok and bool(nvml) and used > 0
        row.note = f"NVML: {len(samples)} samples, {nvml[0]['name'] if nvml else 'none'}, max used {used / GIB:.1f} GiB"
    else:
        row.note = f"injected OOM (cpu smoke), NVML skipped; {len(samples)} samples"
    if not row.ok:
        row.note += f"; phase {st.get('phase')}, fallbacks {falls}, reason {st.get('reason')}"
    return row


def run_check(cfg: Config, budget: Budget) -> list:
    """Every phase in order; a failed corpus/tokenizer stops the rest (they need it)."""
    rows = [phase_data(cfg, budget)]
    if not rows[0].ok:
        return rows
    b, s = cfg.device_bs, cfg.sft_bs
    L = PHASE_LIMITS
    rows.append(phase_train(cfg, budget, "base_train", True, "gc", b, 2, L["base_compiled"]))  # accumulating
    rows.append(phase_train(cfg, budget, "base_train", False, "gceager", b, 1, L["base_eager"]))  # one micro-step
    # mid_train: the base model "gc" at the same shapes, so inductor's graph cache can serve the compile
    rows.append(phase_train(cfg, budget, "mid_train", True, "gc", b, 2, L["mid_compiled"]))
    rows.append(phase_train(cfg, budget, "chat_sft", False, "gc", s, 2, L["sft_eager"], extra=["--source=mid"]))
    rows.append(phase_probe(cfg, budget))
    rows.append(phase_supervised_oom(cfg, budget))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny, on the CPU: checks this script, not the GPU")
    args = ap.parse_args(argv)
    try:
        budget_s = float(os.environ.get("GPU_CHECK_BUDGET_S", "600"))
    except ValueError:
        print("gpu_check: GPU_CHECK_BUDGET_S must be a number of seconds", file=sys.stderr)
        return 2
    if not args.smoke:
        import torch
        if not torch.cuda.is_available():
            print("gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False); run it on a machine with "
                  "an NVIDIA GPU", file=sys.stderr)
            return 2
    base = Path(os.environ.get("GPU_CHECK_BASE") or tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        cfg = make_config(args.smoke, base)
    except ValueError as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return 2
    base.mkdir(parents=True, exist_ok=True)
    budget = Budget(budget_s)
    device = "cpu (smoke)"
    if not args.smoke:
        import torch
        device = f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    print(f"gpu_check: {device}; d{cfg.depth}, T={cfg.seq_len}; budget {budget_s:.0f} s; base dir {base}",
          flush=True)
    rows = run_check(cfg, budget)
    print("\n".join(format_table(rows)))
    used = budget.used()
    within = used <= budget_s
    print(f"gpu_check: {sum(r.ok for r in rows)}/{len(rows)} ok; {used:.0f} s of the {budget_s:.0f} s budget"
          f"{'' if within else ' - OVER BUDGET'}")
    report = os.environ.get("GPU_CHECK_REPORT")
    if report:
        Path(report).write_text(json.dumps({"device": device, "used_s": round(used, 1), "budget_s": budget_s,
                                            "rows": [dict(vars(r), ratio=r.ratio) for r in rows]}, indent=1))
    return 0 if within and all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
