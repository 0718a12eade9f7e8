"""The supervisor's out-of-memory branch: a stage that ran out of memory waits for a decision (the fallback ladder,
unattended after the grace period) and restarts at a smaller DEVICE_BS from its newest checkpoint, in the script's own
flag dialect (docs/CONTRACTS.md "OOM policy"); the decision itself is the pure policy's (nanotui/core/oom.py)."""
from __future__ import annotations

import time

from nanotui.core import oom as policy
from nanotui.core.resumable import STOP_OOM
from nanotui.core.runstate import OomStopRequest, PendingOomRecord, StopRequest
from nanotui.runtime import decision
from nanotui.runtime.dialects import resume_words, stage_dialect


def handle(sup, idx: int, end):
    """After an out-of-memory exit: (argv, device_bs) to restart with, or the supervisor's exit code (stopped)."""
    from nanotui.runtime.supervisor import stage_argv  # the supervisor imports this module
    stage = sup.stages[idx]
    name = stage["name"]
    bs = sup.state.device_bs or (end.oom.device_bs if end.oom else None)
    ck = sup.state.last_checkpoint
    ckpt_step = ck.step if ck and ck.stage == name else None
    step = (end.oom.step if end.oom and end.oom.step is not None else end.last_step)
    total = stage.get("total_batch_size") or sup.state.total_batch_size
    seq = stage.get("seq_len") or sup.state.seq_len or 1
    world = int(stage.get("world_size") or 1)
    sup.event("oom", stage=name, step=step, device_bs=bs, exit_code=end.exit_code,
              emergency_step=end.oom.emergency_step if end.oom else None, ckpt_step=ckpt_step)
    now = time.time()
    with sup.lock:
        sup.request = None
    dia = stage_dialect(stage)
    can_resume, note = (True, "") if dia is None else (dia.can_resume, resume_words(stage, None, step))
    # (for a script that cannot resume, resume_words is the plain "restarts at step 0, N steps lost")
    sup._apply_policy(policy.OomDetected(name, step, bs, ckpt_step, now, total, seq, world, can_resume, note))
    p = sup.oom_state.pending
    if sup.oom_state.phase == "waiting" and p is not None:
        sup.state.pending_oom = PendingOomRecord(name, step, bs, list(p.ladder), p.deadline, p.note or None)
        sup.set_phase("waiting", f"out of memory at device_batch_size={bs}; waiting for a decision")
        sup.event("waiting", notify="waiting", message=sup.state.reason, stage=name,
                   ladder=list(p.ladder), deadline=p.deadline, grace=sup.oom_state.grace,
                   pending_oom=sup.state.pending_oom.to_json())
    req = decision.await_request(sup)
    if isinstance(req, OomStopRequest):  # batch 1 still out of memory
        return decision.stop_by_policy(sup, idx, req.reason, STOP_OOM)
    if isinstance(req, StopRequest):
        sup.oom_state = policy.decide(sup.oom_state, policy.UserStop(req.reason))[0]
        return sup._stopped(idx, req.reason, end)
    new_bs, resume, why = req.device_bs, req.resume, req.why
    sup.oom_state = policy.decide(sup.oom_state, policy.Resumed(new_bs))[0]
    kind = "fallback" if new_bs != bs else "retry"
    sup.event(kind, notify=kind, message=f"{name}: restarting at device_batch_size={new_bs} (was {bs}) "
              f"from {resume_words(stage, resume, step)} ({why})",
              stage=name, from_bs=bs, to_bs=new_bs, step=resume, why=why, ckpt_step=ckpt_step)
    return stage_argv(stage, new_bs, resume), new_bs
