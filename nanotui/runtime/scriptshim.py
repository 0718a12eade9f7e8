"""The launcher a supervised bash script's python/python3/torchrun calls go through (docs/DIALECTS.md "Whole scripts").

Usage (from the BASH_ENV hook of nanotui/runtime/scripts.py): scriptshim.py NAME REAL ARGS...
A training stage (`-m ...base_train|mid_train|chat_sft` or a `.../base_train.py` path) is handed to a supervisor as
a run of its own, linked to the script's run (run.json `parent`, `parent_key`); the launcher waits for it and exits
0 when it is done, 1 when it failed, 4 when it was stopped. Any other call is exec'd unchanged. Resuming the
script's run re-runs the script: a training stage whose linked run is done is skipped, an unfinished one resumes.
Started as a file path, so it needs no PYTHONPATH.
"""
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nanotui.core.dialect import script_of  # noqa: E402

EXIT_STOPPED = 4
POLL_S = 0.5


def training_script(args: list) -> str | None:
    """base_train / mid_train / chat_sft when the call runs one (the last `-m MODULE`, else a script path)."""
    mods = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "-m" and script_of(args[i + 1])]
    if mods:
        return script_of(mods[-1])
    for a in args:
        if a.endswith(".py") and script_of(a):
            return script_of(a)
        if a == "--":
            break
    return None


def _say(text: str) -> None:
    print(f"[nanotui] {text}", flush=True)


def _clean_env() -> None:
    """The stage's environment is the script's, without the hook (the trainer must not re-enter it)."""
    from nanotui.runtime.scripts import SHIM_VARS
    user = os.environ.get("NANOTUI_USER_BASH_ENV")
    for var in SHIM_VARS:
        os.environ.pop(var, None)
    if user:
        os.environ["BASH_ENV"] = user


def _linked(parent, key: str):
    """The run this script's run already started for the same call (same cwd and arguments), newest first."""
    from nanotui.runtime.rundir import list_runs
    for rd in list_runs(parent.path.parent.parent):
        try:
            plan = rd.read_plan()
        except Exception:
            continue
        if plan.get("parent") == parent.run_id and plan.get("parent_key") == key:
            return rd
    return None


def _wait(child, stop_reason: list) -> str:
    """Wait for the child run's supervisor to finish; forward a stop we receive. Returns its end phase."""
    from nanotui.runtime.control import ControlClient, ControlError
    asked = False
    while True:
        if stop_reason and not asked:
            asked = True
            try:
                ControlClient(child, timeout=5).request("stop", reason=stop_reason[0])
            except (ControlError, OSError):
                pass
        phase = child.read_state().get("phase")
        if not child.supervisor_alive() and phase not in ("starting", "running", "waiting"):
            return phase or "failed"
        time.sleep(POLL_S)


def hand_over(script: str, argv: list) -> int | None:
    """Run the training call as a supervised run linked to the script's run; its exit code (None: run it as is)."""
    from nanotui.core.plan import PlanError
    from nanotui.runtime.dialects import command_plan
    from nanotui.runtime.launch import StartError, resume_run, start_plan
    from nanotui.runtime.rundir import RunDir
    parent = RunDir(os.environ["NANOTUI_PARENT_RUN"])
    try:
        pplan = parent.read_plan()
    except Exception as e:  # RunNotFound, OSError: the training still runs, as written
        _say(f"{script}: cannot read the script's run ({e}); running it unsupervised")
        return None
    runs_base = parent.path.parent.parent
    data_base = os.environ.get("NANOCHAT_BASE_DIR") or pplan.get("base_dir") or str(runs_base)
    cwd = os.getcwd()
    key = hashlib.sha256(json.dumps([cwd, argv[1:]]).encode()).hexdigest()[:16]
    grace = pplan.get("grace") if pplan.get("grace_given") else None
    _clean_env()
    stop_reason: list = []

    def on_signal(signum, frame):
        if not stop_reason:
            stop_reason.append(f"the script's run was stopped ({signal.Signals(signum).name})")
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    child = _linked(parent, key)
    try:
        if child is not None and child.read_state().get("phase") == "done":
            _say(f"{script}: already done in run {child.run_id}; skipping")
            parent.append_event("substage", stage=script, run_id=child.run_id, state="done", exit_code=0)
            return 0
        if child is not None and child.supervisor_alive():   # already running again (e.g. resumed at boot)
            _say(f"{script}: its run {child.run_id} is running; waiting for it")
        elif child is not None:
            _say(f"{script}: resuming its run {child.run_id}")
            resume_run(child, grace=grace)
        else:
            plan, notes = command_plan(argv, data_base, cwd, name=script)
            plan.update(profile=script, parent=parent.run_id, parent_key=key,
                        lineage_id=os.environ.get("NANOCHAT_RUN_ID") or parent.run_id)
            for note in notes:
                _say(note)
            child, _pid = start_plan(plan, runs_base, cwd=cwd, grace=grace,
                                     stop_timeout=pplan.get("stop_timeout"))
    except (StartError, PlanError) as e:
        _say(f"{script}: could not start a supervised stage: {e}")
        return 1
    parent.append_event("substage", stage=script, run_id=child.run_id, state="running", argv=argv,
                        message=f"{script}: supervised as run {child.run_id} (nanotui attach {child.run_id})")
    _say(f"{script}: supervised as run {child.run_id} (watch: nanotui attach {child.run_id})")
    phase = _wait(child, stop_reason)
    code = {"done": 0, "stopped": EXIT_STOPPED}.get(phase, 1)
    reason = child.read_state().get("reason")
    parent.append_event("substage", stage=script, run_id=child.run_id, state=phase, exit_code=code,
                        message=f"{script}: run {child.run_id} {phase}" + (f" ({reason})" if reason else ""))
    _say(f"{script}: run {child.run_id} {phase}" + (f": {reason}" if reason else ""))
    if phase == "stopped" and not stop_reason:
        # stopped on its own (nanotui stop on the stage's run): the script stops too, rather than run on
        from nanotui.runtime.control import ControlClient, ControlError
        try:
            ControlClient(parent, timeout=5).request("stop", reason=f"{script} (run {child.run_id}) was stopped")
        except (ControlError, OSError):
            pass
    return code


def main(argv: list) -> int:
    if len(argv) < 2:
        print("usage: scriptshim.py NAME REAL [ARGS...]", file=sys.stderr)
        return 2
    name, real, args = argv[0], argv[1], argv[2:]
    if not real:
        print(f"{name}: command not found", file=sys.stderr)
        return 127
    script = training_script(args) if os.environ.get("NANOTUI_PARENT_RUN") else None
    code = hand_over(script, [real] + args) if script is not None else None
    if code is None:
        os.execv(real, [real] + args)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
