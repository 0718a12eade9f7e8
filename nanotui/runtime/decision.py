"""Waiting for a decision after an OOM or a divergence (the grace-period countdown of the pure policy, or a choice
over the control socket), and the stop that ends a stage when the policy gives up."""
from __future__ import annotations

import time

from nanotui.core import oom as policy

POLL = 0.2


def await_request(sup):
    """Block until a request arrives (the policy's own after its grace period, or a user's); returns it, cleared."""
    while True:
        with sup.lock:
            req = sup.request
        if req:
            break
        sup._apply_policy(policy.GraceTick(time.time()))
        time.sleep(POLL)
    with sup.lock:
        sup.request = None
        sup.state.pending_oom = None
    return req


def stop_by_policy(sup, idx: int, reason: str, cause: str) -> int:
    """The policy stops the stage (batch 1 still out of memory, the rollback limit): recorded, notified, exit 0.
    `cause` goes to state.json's stop_cause, so a boot-time resume leaves the run alone (core/resumable.py)."""
    rec = sup.stage_rec(idx)
    rec.state, rec.reason = "stopped", reason
    sup.state.stage_pid = None
    sup.state.extra["stop_cause"] = cause
    sup.set_phase("stopped", reason)
    sup.event("stopped", notify="stopped", message=reason, stage=sup.stages[idx]["name"], reason=reason)
    return 0
