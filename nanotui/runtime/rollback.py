"""The supervisor's divergence branch: a stage that exited 5 rolls back to an earlier checkpoint of this run and
skips the data window that diverged, unattended after the grace period (docs/CONTRACTS.md "Divergence").

The decision is the pure policy's (nanotui/core/oom.py `decide`, nanotui/core/divergence.py arithmetic); this
module gathers its inputs (the Divergence trailer, the stage's committed checkpoints, the run state's rollbacks and
skip list), waits like the OOM branch, then records the rollback in state.json (`rollbacks`, `data_skips`) before
the restart, so a SIGTERM at any point leaves a run that `nanotui resume` continues with the same skip list.
"""
from __future__ import annotations

import time
from pathlib import Path

from nanotui.core import ckpts
from nanotui.core import oom as policy
from nanotui.core.argvflags import drop_flag, flag_value
from nanotui.core.divergence import (DEFAULT_MAX_ROLLBACKS, DEFAULT_SKIP_MARGIN, format_skips, parse_skips,
                                     skips_from_json)
from nanotui.core.resumable import STOP_DIVERGENCE
from nanotui.core.runstate import OomStopRequest, RestartRequest, RollbackRequest, StopRequest
from nanotui.runtime import decision

KIND_WORDS = {"nonfinite": "non-finite loss", "spike": "loss spike"}


def with_skips(argv: list, stage: dict, state) -> list:
    """The stage argv with the run's skip list for it as `--data_skip=S:N,...` (training stages only)."""
    ours = stage.get("trains") and not stage.get("dialect")  # upstream scripts know no --data_skip
    skips = skips_from_json(state.data_skips.get(stage.get("name"))) if ours else {}
    if not skips:
        return list(argv)
    return drop_flag(argv, "data_skip") + [f"--data_skip={format_skips(skips)}"]


def committed_steps(sup, stage: dict) -> list:
    """Valid (committed) checkpoint steps of this run in the stage's checkpoint directory."""
    if not stage.get("ckpt_subdir"):
        return []
    base = Path(sup.plan.get("base_dir") or ".")
    return sorted(c.step for c in ckpts.scan_dir(str(base / stage["ckpt_subdir"]))
                  if c.status == "valid" and c.run_id == sup.rd.run_id)


def handle(sup, idx: int, end):
    """After a divergence exit: (argv, device_bs) to restart with, or the supervisor's exit code (stopped)."""
    from nanotui.runtime.supervisor import stage_argv  # the supervisor imports this module
    stage = sup.stages[idx]
    name = stage["name"]
    div = end.divergence  # the trainer's `Divergence:` trailer (the supervisor only comes here with one)
    onset, kind = div.step, div.kind
    done = sum(1 for r in sup.state.rollbacks if r.get("stage") == name)
    # the run's list so far; before the first rollback, the one the plan gave the stage (`--set ...:--data_skip`)
    skips = skips_from_json(sup.state.data_skips.get(name)) or parse_skips(flag_value(stage["argv"], "data_skip"))
    sup.event("divergence", stage=name, step=onset, cause=kind, detail=div.detail, ckpt_step=div.ckpt_step,
              exit_code=end.exit_code, rollbacks=done)
    with sup.lock:
        sup.request = None
    sup._apply_policy(policy.DivergenceDetected(
        name, onset, kind, tuple(committed_steps(sup, stage)), done, tuple(sorted(skips.items())), time.time(),
        int(sup.plan.get("rollback_margin", DEFAULT_SKIP_MARGIN)),
        int(sup.plan.get("max_rollbacks", DEFAULT_MAX_ROLLBACKS))))
    p = sup.oom_state.pending
    if sup.oom_state.phase == "waiting" and isinstance(p, policy.PendingDivergence):
        back = p.rollback.from_step
        sup.set_phase("waiting", f"{KIND_WORDS.get(kind, kind)} at step {onset}; rolling back to "
                                 f"{'step ' + str(back) if back is not None else 'the start'}")
        sup.event("waiting", notify="waiting", message=sup.state.reason, stage=name, deadline=p.deadline,
                  grace=sup.oom_state.grace)
    req = decision.await_request(sup)
    if isinstance(req, OomStopRequest):  # the rollback limit
        return decision.stop_by_policy(sup, idx, req.reason, STOP_DIVERGENCE)
    if isinstance(req, StopRequest):
        sup.oom_state = policy.decide(sup.oom_state, policy.UserStop(req.reason))[0]
        return sup._stopped(idx, req.reason, end)
    bs = sup.state.device_bs or stage.get("device_bs")
    if isinstance(req, RestartRequest):  # a user `resume` instead of the rollback
        sup.oom_state = policy.decide(sup.oom_state, policy.Resumed(req.device_bs))[0]
        return stage_argv(stage, req.device_bs, req.resume), req.device_bs
    assert isinstance(req, RollbackRequest), req
    sup.oom_state = policy.decide(sup.oom_state, policy.Resumed(bs))[0]
    skips_text = format_skips(dict(req.skips))
    sup.state.rollbacks.append({"stage": name, "onset": req.onset, "kind": req.kind, "from_step": req.from_step,
                                "skips": skips_text, "t": round(time.time(), 3)})
    sup.state.data_skips[name] = {str(s): n for s, n in req.skips}
    sup.save_state()  # before the restart: a stop from here on resumes with this skip list
    back = f"checkpoint step {req.from_step}" if req.from_step is not None else "the start"
    sup.event("rollback", notify="rollback", stage=name, from_step=req.from_step, onset=req.onset, cause=req.kind,
              skips=skips_text, rollbacks=done + 1, why=req.why,
              message=f"{name}: rollback {done + 1} to {back} after a {KIND_WORDS.get(req.kind, req.kind)} at "
                      f"step {req.onset}; data skipped {skips_text} ({req.why})")
    return stage_argv(stage, bs, req.from_step), bs
