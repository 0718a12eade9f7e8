"""speedrun.sh's memory: one run id per pipeline until it finishes, finished stages skipped, training resumed from
this run's newest checkpoint, an OOM retried at half the device batch, the knobs validated before any download.

    python -m nanochat.speedrun_helper validate PROFILE        DEVICE_BS, SFT_BS, SEQ_LEN, NPROC_PER_NODE (env)
    python -m nanochat.speedrun_helper begin PROFILE [--fresh] prints the run id (continues the unfinished one)
    python -m nanochat.speedrun_helper run NAME [--ckpt DIR] -- CMD...   runs a stage unless done in this run
    python -m nanochat.speedrun_helper finish                  the pipeline is done: the next invocation is new

State: `$NANOCHAT_BASE_DIR/speedrun_state.json` {run_id, profile, done: [stage names], device_bs: {stage: B}},
written atomically. Messages go to stderr; `begin` prints only the run id on stdout.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

STATE_FILE = "speedrun_state.json"
FRESH_SWITCH = "SPEEDRUN_FRESH=1"          # documented in speedrun.sh: start over
EXIT_OOM = 3
TOTALS = {"cpu-demo": 8192}                 # tokens per optimizer step of base/mid (speedrun.sh); else upstream's
DEFAULT_TOTAL = 524288
SFT_EXAMPLES = 32                           # chat_sft's --target_examples_per_step default


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def base_dir() -> str:
    return os.environ.get("NANOCHAT_BASE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "nanochat")


def state_path() -> str:
    return os.path.join(base_dir(), STATE_FILE)


def read_state() -> dict | None:
    try:
        with open(state_path()) as f:
            st = json.load(f)
        return st if isinstance(st, dict) and isinstance(st.get("run_id"), str) else None
    except (OSError, ValueError):
        return None


def write_state(st: dict) -> None:
    os.makedirs(base_dir(), exist_ok=True)
    tmp = f"{state_path()}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(st, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, state_path())


# ------------------------------------------------------------------------------------------------- validate
def _positive(name: str, allow_auto: bool = False):
    text = os.environ.get(name, "").strip()
    if allow_auto and text.lower() == "auto":
        return "auto"
    if not re.fullmatch(r"[0-9]+", text) or int(text) < 1:
        extra = " or auto" if allow_auto else ""
        raise ValueError(f"{name} must be a positive integer{extra}, got {text!r}; fix it and run speedrun.sh again")
    return int(text)


def validate(profile: str) -> None:
    """ValueError (one line) for a knob the stages would refuse hours later."""
    if profile not in ("cpu-demo", "4090"):
        raise ValueError(f"PROFILE must be cpu-demo or 4090 (the default), got {profile!r}")
    bs, sft = _positive("DEVICE_BS", True), _positive("SFT_BS", True)
    seq, nproc = _positive("SEQ_LEN"), _positive("NPROC_PER_NODE")
    from nanochat.common import UsageError            # the stages' own batch arithmetic (imports torch)
    from nanochat.tasks.batching import check_sft_batch
    from nanochat.trainer import compute_grad_accum
    try:
        if bs != "auto":
            compute_grad_accum(TOTALS.get(profile, DEFAULT_TOTAL), bs, seq, nproc)
        if sft != "auto":
            check_sft_batch(SFT_EXAMPLES, sft, nproc)
    except UsageError as e:
        raise ValueError(f"{e} (DEVICE_BS={bs}, SEQ_LEN={seq}, SFT_BS={sft}, NPROC_PER_NODE={nproc})") from None
    import torch
    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if devices and nproc > devices:
        raise ValueError(f"NPROC_PER_NODE={nproc} but {devices} CUDA device(s) are visible; set NPROC_PER_NODE="
                         f"{devices}")
    if profile != "cpu-demo" and not devices:
        raise ValueError("no CUDA GPU is visible; the 4090 plan needs one (PROFILE=cpu-demo runs the CPU demo)")


# ------------------------------------------------------------------------------------------------- begin/finish
def begin(profile: str, fresh: bool) -> str:
    st = read_state()
    named = os.environ.get("NANOCHAT_RUN_ID") or None
    if st and fresh:
        say(f"starting over ({FRESH_SWITCH}): run {st['run_id']} is left behind; its checkpoints are moved aside "
            f"(never deleted) when this run trains under the same model tag")
        st = None
    if st and st.get("profile") != profile:
        say(f"run {st['run_id']} was a {st.get('profile')} pipeline; starting a new {profile} run")
        st = None
    if st and named and named != st["run_id"]:
        say(f"NANOCHAT_RUN_ID={named} names another run than the unfinished {st['run_id']}; starting run {named}")
        st = None
    if st:
        done = ", ".join(st.get("done") or []) or "none yet"
        say(f"continuing run {st['run_id']} (stages done: {done}); {FRESH_SWITCH} bash speedrun.sh starts over")
        return st["run_id"]
    run_id = named or f"speedrun-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{os.getpid()}"
    write_state({"run_id": run_id, "profile": profile, "done": [], "device_bs": {},
                 "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    say(f"new run {run_id}: running speedrun.sh again continues it until the pipeline finishes")
    return run_id


def finish() -> None:
    st = read_state()
    if st:
        os.replace(state_path(), os.path.join(base_dir(), f"speedrun_state.{st['run_id']}.done.json"))
        say(f"run {st['run_id']} finished; the next speedrun.sh starts a new run")


# ------------------------------------------------------------------------------------------------- run a stage
def _flag(argv: list, name: str):
    for a in reversed(argv):
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


def _set(argv: list, name: str, value) -> list:
    return [a for a in argv if not a.startswith(f"--{name}=")] + [f"--{name}={value}"]


def _newest_step(ckpt_dir: str | None, run_id: str):
    if not ckpt_dir:
        return None
    path = os.path.join(base_dir(), ckpt_dir)
    if not os.path.isdir(path) or not any(n.startswith("meta_") for n in os.listdir(path)):
        return None   # nothing committed yet (and no torch import for nothing)
    try:
        from nanochat.checkpoint import latest_step_of_run
        return latest_step_of_run(os.path.join(base_dir(), ckpt_dir), run_id)
    except Exception:
        return None


def run_stage(name: str, cmd: list, ckpt_dir: str | None) -> int:
    st = read_state()
    if st is None:
        say("error: no speedrun state; speedrun.sh calls `begin` first")
        return 2
    if name in (st.get("done") or []):
        say(f"=== {name}: done in run {st['run_id']}, skipped ===")
        return 0
    trains = ckpt_dir is not None
    if trains:
        cmd = _set(cmd, "resume_from_step", "latest")   # this run's newest checkpoint, else a fresh start
        saved_bs = (st.get("device_bs") or {}).get(name)
        if saved_bs:   # an OOM of an earlier invocation halved it: keep that
            cmd = _set(cmd, "device_batch_size", saved_bs)
        step = _newest_step(ckpt_dir, st["run_id"])
        if step is not None:
            say(f"{name}: resuming run {st['run_id']} from its checkpoint step {step}")
    while True:
        say(f"=== {name}: {' '.join(cmd)} ===")
        try:
            rc = subprocess.call(cmd)
        except KeyboardInterrupt:   # Ctrl-C reached the stage too; it checkpoints and exits on its own
            return 130
        if rc == 0:
            st = read_state() or st
            st["done"] = list(st.get("done") or []) + [name]
            write_state(st)
            return 0
        bs = _flag(cmd, "device_batch_size")
        if rc != EXIT_OOM or not trains or not (bs or "").isdigit() or int(bs) <= 1:
            if rc == EXIT_OOM:
                say(f"{name}: out of memory at device_batch_size={bs}; nothing smaller to try")
            return rc
        half = int(bs) // 2
        step = _newest_step(ckpt_dir, st["run_id"])
        where = f"its emergency checkpoint step {step}" if step is not None else "the start (no checkpoint yet)"
        say(f"{name}: out of memory at device_batch_size={bs} (exit 3); retrying at device_batch_size={half} from "
            f"{where}; the total batch is unchanged, so gradient accumulation doubles")
        st = read_state() or st
        st.setdefault("device_bs", {})[name] = half
        write_state(st)
        cmd = _set(cmd, "device_batch_size", half)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    what = argv[0] if argv else ""
    try:
        if what == "validate" and len(argv) == 2:
            validate(argv[1])
            return 0
        if what == "begin" and len(argv) >= 2:
            print(begin(argv[1], "--fresh" in argv[2:]))
            return 0
        if what == "finish":
            finish()
            return 0
        if what == "run" and "--" in argv and len(argv) >= 4:
            sep = argv.index("--")
            opts, cmd = argv[2:sep], argv[sep + 1:]
            ckpt = opts[opts.index("--ckpt") + 1] if "--ckpt" in opts[:-1] else None
            return run_stage(argv[1], cmd, ckpt)
    except ValueError as e:
        say(f"error: {e}")
        return 2
    say("error: usage: python -m nanochat.speedrun_helper validate PROFILE | begin PROFILE [--fresh] | "
        "run NAME [--ckpt DIR] -- CMD... | finish")
    return 2


if __name__ == "__main__":
    sys.exit(main())
