"""The one start path of `nanotui start`/`run`/`demo`, the TUI's new-run dialog and resume: plan, checks, spawn, confirm."""
from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Mapping, Optional

from nanotui.core.plan import PlanError, build_plan, set_stage_flag
from nanotui.runtime.rundir import RunDir, list_runs, shown


class StartError(Exception):
    """A start/resume that must not happen (exit 2) or did not happen (`code` 1); str() is one line for the user."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def apply_stage_options(plan: dict, stages: Optional[str], sets: Iterable[str]) -> dict:
    """`--stages a,b` keeps only those stages (in plan order); `--set STAGE:--flag=value` edits a stage (argv and the
    plan fields the supervisor owns: device batch, seq len, total batch, iterations, model tag)."""
    if stages is not None:
        wanted = [s.strip() for s in stages.split(",") if s.strip()]
        names = [s["name"] for s in plan["stages"]]
        if not wanted:
            raise StartError(f"--stages names no stage; give a comma-separated subset of: {', '.join(names)}")
        unknown = [w for w in wanted if w not in names]
        if unknown:
            raise StartError(f"unknown stage {unknown[0]!r} for profile {plan['profile']}; stages: {', '.join(names)}")
        plan["stages"] = [s for s in plan["stages"] if s["name"] in wanted]
    for item in sets or []:
        stage_name, sep, flagval = item.partition(":")
        flag, eq, value = flagval.lstrip("-").partition("=")
        if not sep or not eq or not flag:
            raise StartError(f"--set wants STAGE:--flag=value, got {item!r}")
        idx = [i for i, s in enumerate(plan["stages"]) if s["name"] == stage_name]
        if not idx:
            raise StartError(f"--set: no stage {stage_name!r} in this plan")
        for i in idx:
            try:
                plan["stages"][i] = set_stage_flag(plan["stages"][i], flag, value)
            except PlanError as e:
                raise StartError(str(e)) from None
    return plan


def profile_plan(profile: str, overrides: Mapping, stages: Optional[str] = None, sets: Iterable[str] = (),
                 python: str | None = None) -> dict:
    """The run.json plan of a profile with overrides (DEVICE_BS=...), `--stages` and `--set` applied; the user's
    config file (runtime/settings.py) fills in what the overrides leave unset (W&B run name, entity, project)."""
    from nanotui.runtime import settings
    try:
        overrides = settings.plan_overrides(overrides)
        plan = settings.apply_to_plan(build_plan(profile, overrides, python=python or sys.executable).to_dict())
    except (PlanError, settings.ConfigError) as e:
        raise StartError(str(e)) from None
    return apply_stage_options(plan, stages, sets)


# ---- one run per checkpoint directory --------------------------------------------------------------
def _ckpt_dirs(plan: Mapping, base_dir: Path) -> set:
    base = Path(plan.get("base_dir") or base_dir)
    return {os.path.normpath(base / s["ckpt_subdir"]) for s in plan.get("stages", [])
            if isinstance(s, Mapping) and s.get("ckpt_subdir")}


def run_is_live(rd: RunDir) -> bool:
    """A supervisor holds the run, or its state says running and the stage process still exists."""
    if rd.supervisor_alive():
        return True
    from nanotui.runtime.procs import pid_matches
    st = rd.read_state()
    return st.get("phase") in ("starting", "running", "waiting") and \
        pid_matches(st.get("stage_pid"), st.get("stage_pid_created"))


def conflicting_run(plan: Mapping, base_dir: Path, exclude: str | None = None) -> Optional[str]:
    """One line naming a live run that writes a checkpoint directory this plan would write, else None."""
    mine = _ckpt_dirs(plan, base_dir)
    if not mine:
        return None
    for rd in list_runs(base_dir):
        if rd.run_id == exclude:
            continue
        try:
            other = rd.read_plan()
        except Exception:
            continue
        shared = mine & _ckpt_dirs(other, base_dir)
        if shared and run_is_live(rd):
            return (f"run {rd.run_id} is live and writes {sorted(shared)[0]}; stop it first "
                    f"(`nanotui stop {rd.run_id}`) or use another model tag (--set STAGE:--model_tag=NAME)")
    return None


# ---- spawning and confirming ------------------------------------------------------------------------
def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except FileNotFoundError:
        return ""
    return lines[-1] if lines else ""


def _events_size(rd: RunDir) -> int:
    try:
        return rd.events_path.stat().st_size
    except OSError:
        return 0


def launch(rd: RunDir, extra: Iterable[str] = (), wait_s: float = 15.0, confirm: bool = True) -> int:
    """Start a detached supervisor and wait until its first stage attempt started (or it failed): returns its pid.

    Raises StartError with the supervisor's own reason when it refused (exit 2), or when the stage it was to run
    could not start (e.g. the working directory is gone) — a resume never claims success that did not happen."""
    from nanotui.runtime.control import ControlClient
    from nanotui.runtime.supervisor import spawn_supervisor
    offset = _events_size(rd)
    proc = spawn_supervisor(rd, list(extra))
    client = ControlClient(rd, timeout=2.0)
    deadline = time.monotonic() + wait_s
    listening = False
    while time.monotonic() < deadline:
        rc = proc.poll()
        for ev in rd.iter_events(offset):
            kind = ev.get("type")
            if kind == "failed":
                raise StartError(f"run {rd.run_id} did not start: {shown(ev.get('message') or ev.get('reason'))}",
                                 code=1)
            if kind in ("stage_started", "adopted", "done", "stopped"):
                return proc.pid
        if rc is not None:
            if rc == 2:
                last = _last_line(rd.supervisor_log)
                raise StartError(last[len("error: "):] if last.startswith("error: ") else last)
            if rc == 0:
                return proc.pid  # a very short run that already finished
            reason = rd.read_state().get("reason")
            raise StartError(f"the supervisor exited with code {rc}"
                             + (f": {shown(reason)}" if reason else f"; see {rd.supervisor_log}"), code=1)
        if not listening:
            listening = rd.socket_path.exists() and client.available()
            if listening and not confirm:
                return proc.pid
        time.sleep(0.05)
    return proc.pid


def start_plan(plan: dict, base_dir: Path, *, cwd: str | None = None, grace=None,
               stop_timeout: float | None = None, preflight: bool = True) -> tuple[RunDir, int]:
    """Create the run directory for `plan` and start its supervisor: the same checks for the CLI and the TUI.
    Refuses (StartError) when another live run writes the same checkpoint directories, and (`preflight`) when
    nanotui/runtime/preflight.py refuses the plan."""
    from nanotui.core.oom import parse_grace
    given = grace is not None   # an explicit grace also consents to restarts from step 0 (docs/DIALECTS.md)
    try:
        grace = 60.0 if grace is None else parse_grace(grace)
    except ValueError as e:
        raise StartError(str(e)) from None
    base = Path(base_dir)
    plan = dict(plan)
    plan.update(base_dir=str(base), cwd=cwd or os.getcwd(), grace=grace, grace_given=given)
    if preflight:
        from nanotui.runtime.preflight import refuse_if_unfit
        refuse_if_unfit(plan, base)
    if stop_timeout is not None:
        if not 0 <= stop_timeout < float("inf"):
            raise StartError(f"--stop-timeout must be seconds >= 0, got {stop_timeout:g}")
        plan["stop_timeout"] = stop_timeout
    try:
        base.mkdir(parents=True, exist_ok=True)
        (base / "runs").mkdir(exist_ok=True)
        lock_fd = os.open(base / "runs" / ".start.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise StartError(f"cannot create a run directory under {base} ({e.strerror or e}); "
                         f"set NANOCHAT_BASE_DIR to a writable directory") from None
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)  # two starts at once: the second sees the first as live
        clash = conflicting_run(plan, base)
        if clash:
            raise StartError(clash)
        try:
            rd = RunDir.create(base, plan)
        except OSError as e:
            raise StartError(f"cannot create a run directory under {base} ({e.strerror or e}); "
                             f"set NANOCHAT_BASE_DIR to a writable directory") from None
        return rd, launch(rd)
    finally:
        os.close(lock_fd)


# ---- resume (CLI `nanotui resume` and the TUI's resume keys) -------------------------------------------
def _resume_stage(rd: RunDir) -> Optional[dict]:
    plan, st = rd.read_plan(), rd.read_state()
    stages = plan.get("stages", [])
    idx = st.get("stage_index") or 0
    return stages[idx] if 0 <= idx < len(stages) else None


def own_checkpoints(rd: RunDir, stage: Mapping) -> list:
    """The stage's usable checkpoints that this run wrote (meta `run_id` == the run id), oldest first."""
    from nanotui.core import ckpts
    base = Path(rd.read_plan().get("base_dir") or ".")
    infos = ckpts.scan_dir(str(base / stage["ckpt_subdir"]))
    return [c for c in infos if c.status != "invalid" and c.run_id == rd.run_id]


def check_resume_step(rd: RunDir, step: int) -> None:
    """StartError unless the stage a resume continues has a checkpoint of THIS run at `step`."""
    stage = _resume_stage(rd)
    if not stage or not stage.get("trains") or not stage.get("ckpt_subdir"):
        name = stage["name"] if stage else "?"
        raise StartError(f"--step applies to a training stage, and run {rd.run_id} resumes at {name}; "
                         f"leave --step out")
    base = Path(rd.read_plan().get("base_dir") or ".")
    ckpt_dir = base / stage["ckpt_subdir"]
    from nanotui.runtime.dialects import stage_dialect, upstream_step_problem
    if stage_dialect(stage) is not None:  # upstream writes no run id: any committed step of its directory
        problem = upstream_step_problem(stage, step)
        if problem:
            raise StartError(problem)
        return
    steps = [c.step for c in own_checkpoints(rd, stage)]
    if step not in steps:
        have = ", ".join(map(str, steps)) or "none"
        from nanotui.core import ckpts
        others = [c for c in ckpts.scan_dir(str(ckpt_dir)) if c.step == step and c.run_id != rd.run_id]
        why = (f"; step {step} there belongs to {'run ' + others[0].run_id if others[0].run_id else 'no run'} "
               f"(load it on purpose with --set {stage['name']}:--model_tag=... in a new run)") if others else ""
        raise StartError(f"{stage['name']} has no checkpoint of run {rd.run_id} at step {step} in {ckpt_dir}; "
                         f"valid steps: {have}{why}")


def check_resume_batch(rd: RunDir, device_bs: int) -> None:
    """StartError when `device_bs` x seq len x ranks does not divide the total batch of the stage a resume runs."""
    stage = _resume_stage(rd) or {}
    total, seq, world = stage.get("total_batch_size"), stage.get("seq_len") or 1, stage.get("world_size") or 1
    if stage.get("trains") and total and total % (device_bs * seq * world):
        from nanotui.core.oom import fallback_ladder
        fits = fallback_ladder(2 * device_bs, total, seq, world)
        raise StartError(f"--device-bs {device_bs} x seq len {seq} x {world} rank(s) does not divide "
                         f"{stage['name']}'s total batch of {total} tokens; try "
                         f"{', '.join(map(str, fits)) or 'a power of two'}")


def resume_run(rd: RunDir, step: int | None = None, device_bs: int | None = None, grace=None) -> int:
    """Spawn a resuming supervisor for a run that has none, after the same checks as a start. Returns its pid;
    StartError (one line) when the run cannot resume, or when its stage did not start after all."""
    if step is not None and step < 0:
        raise StartError("--step must be >= 0")
    if device_bs is not None and device_bs < 1:
        raise StartError("--device-bs must be a positive integer")
    problem = rd.state_problem()
    if problem:
        raise StartError(f"cannot resume run {rd.run_id}: {problem}; restore that file or start a new run "
                         f"with `nanotui start` (its checkpoints are kept)")
    st = rd.load_state()
    if rd.supervisor_alive():
        raise StartError(f"run {rd.run_id} already has a supervisor (pid {st.supervisor_pid}); "
                         f"use `nanotui attach` or `nanotui stop` first")
    if st.phase == "done":
        raise StartError(f"run {rd.run_id} is already done; start a new one with `nanotui start`")
    plan = rd.read_plan()
    clash = conflicting_run(plan, Path(plan.get("base_dir") or rd.path.parent.parent), exclude=rd.run_id)
    if clash:
        raise StartError(clash)
    if grace is None:  # a script that cannot resume (upstream 2025-11) restarts from step 0 only with consent
        from nanotui.runtime.dialects import resume_refusal
        refusal = resume_refusal(_resume_stage(rd), st.step, rd.run_id)
        if refusal:
            raise StartError(refusal)
    if step is not None:
        check_resume_step(rd, step)
    if device_bs is not None:
        check_resume_batch(rd, device_bs)
    if grace is not None:
        from nanotui.core.oom import parse_grace
        try:
            st.grace = parse_grace(grace)
        except ValueError as e:
            raise StartError(str(e)) from None
        rd.write_state(st)
    extra = ["--resume"]
    if step is not None:
        extra += ["--step", str(step)]
    if device_bs is not None:
        extra += ["--device-bs", str(device_bs)]
    return launch(rd, extra)
