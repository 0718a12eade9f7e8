"""Which runs a boot-time `nanotui resume --all-unfinished` continues: interrupted ones, never ones the user stopped."""
from __future__ import annotations

from typing import Mapping, Optional

from nanotui.core.runstate import LIVE_PHASES

STOP_CAUSE_KEY = "stop_cause"   # state.json: why a stopped run stopped (written by the supervisor)
STOP_SIGNAL, STOP_REQUEST, STOP_OOM, STOP_DIVERGENCE = "signal", "request", "oom", "divergence"
_SIGNAL_REASON = "supervisor received SIG"   # the reason older supervisors wrote for a shutdown/logout SIGTERM


def interrupted(state: Mapping, supervisor_alive: bool, stage_alive: bool) -> Optional[str]:
    """Why the run should be resumed after a reboot, or None.

    Resumed: a run whose state still says starting/running/waiting while neither its supervisor nor its stage
    exists (power loss, kernel panic, the supervisor killed), and a run the supervisor stopped because IT got
    SIGTERM (a shutdown or a logout that ends the session). Not resumed: live runs, finished or failed runs, runs
    stopped by `nanotui stop`/the dashboard, and runs stopped by the OOM policy."""
    if supervisor_alive or stage_alive:
        return None
    phase = state.get("phase")
    if phase in LIVE_PHASES:
        return f"it was {phase} when its supervisor went away (power loss, crash or reboot)"
    if phase == "stopped":
        cause = state.get(STOP_CAUSE_KEY)
        reason = str(state.get("reason") or "")
        if cause == STOP_SIGNAL or (cause is None and reason.startswith(_SIGNAL_REASON)):
            return f"it was stopped by a signal to its supervisor ({reason or 'shutdown or logout'})"
    return None
