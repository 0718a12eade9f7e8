"""OOM fallback policy as a pure state machine: decide(state, event) -> (state, actions) (docs/CONTRACTS.md "OOM policy")."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Union

__all__ = [
    "fallback_ladder", "parse_grace", "Grace",
    "OomState", "PendingOom",
    "OomDetected", "GraceTick", "UserFallback", "UserRetry", "UserStop", "Resumed", "SetGrace",
    "Wait", "Restart", "Stop", "Notify", "Reject",
    "decide", "DEFAULT_GRACE_S",
]

DEFAULT_GRACE_S = 60.0
Grace = Union[float, str]  # seconds >= 0, or "off" (wait for a command)


def fallback_ladder(device_bs: int, total_batch_size: Optional[int], seq_len: int = 1,
                    world_size: int = 1) -> list:
    """Smaller powers of two B' < device_bs, largest first, such that B'·seq_len·world_size divides
    total_batch_size (so gradient accumulation absorbs the change and the optimisation stays the same).

    total_batch_size None = unknown: every smaller power of two is offered. Returns [] at B=1 or when
    no rung divides the total batch."""
    if device_bs <= 1:
        return []
    rungs = []
    b = 1
    while b < device_bs:
        rungs.append(b)
        b *= 2
    rungs.reverse()
    if total_batch_size is None:
        return rungs
    per_rank_seqs, rem = divmod(total_batch_size, max(1, seq_len) * max(1, world_size))
    if rem:
        return []
    return [r for r in rungs if per_rank_seqs % r == 0]


def parse_grace(value) -> Grace:
    """'60' / 60 / 0 / 'off' -> 60.0 / 60.0 / 0.0 / 'off'; raises ValueError with a one-line message."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("off", "none", "wait"):
            return "off"
        try:
            value = float(text.rstrip("s"))
        except ValueError:
            raise ValueError(f"grace must be seconds (>= 0) or 'off', got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ValueError(f"grace must be seconds (>= 0) or 'off', got {value!r}")
    return float(value)


# ---------------------------------------------------------------- events (inputs)
@dataclass(frozen=True)
class OomDetected:
    stage: str
    step: Optional[int]
    device_bs: Optional[int]
    ckpt_step: Optional[int]          # newest valid checkpoint of the stage, None = none (restart from scratch)
    now: float = 0.0
    total_batch_size: Optional[int] = None
    seq_len: int = 1
    world_size: int = 1
    can_resume: bool = True           # False: the script cannot resume (upstream 2025-11): a restart loses progress
    note: str = ""                    # the plain words for that loss (core.dialect.scratch_note)


@dataclass(frozen=True)
class GraceTick:
    now: float


@dataclass(frozen=True)
class UserFallback:
    device_bs: int


@dataclass(frozen=True)
class UserRetry:
    pass


@dataclass(frozen=True)
class UserStop:
    reason: str = "stopped by user"


@dataclass(frozen=True)
class Resumed:
    """The stage was restarted (by us or by a user `resume`): the pending OOM is settled."""
    device_bs: Optional[int] = None


@dataclass(frozen=True)
class SetGrace:
    grace: Grace
    now: float = 0.0


# ---------------------------------------------------------------- actions (outputs)
@dataclass(frozen=True)
class Wait:
    deadline: Optional[float]         # None = until a command arrives (grace "off")


@dataclass(frozen=True)
class Restart:
    device_bs: int
    from_step: Union[int, str, None] = "latest"   # None: from step 0 (the script cannot resume)


@dataclass(frozen=True)
class Stop:
    reason: str


@dataclass(frozen=True)
class Notify:
    kind: str                         # "oom" | "fallback" | "retry" | "stopped" | "grace"
    message: str


@dataclass(frozen=True)
class Reject:
    """A command that does not apply now; the control channel answers {"ok": false, "error": reason}."""
    reason: str


# ---------------------------------------------------------------- state
@dataclass(frozen=True)
class PendingOom:
    stage: str
    step: Optional[int]
    device_bs: int
    ckpt_step: Optional[int]
    ladder: tuple
    detected_at: float
    deadline: Optional[float]
    scratch: bool = False             # the restart begins at step 0 (the script cannot resume)
    note: str = ""


@dataclass(frozen=True)
class OomState:
    grace: Grace = DEFAULT_GRACE_S
    scratch_consent: bool = False     # the user agreed up front (--grace at start, set_grace) to restarts from 0
    phase: str = "idle"               # "idle" | "waiting" | "restarting" | "stopped"
    pending: Optional[PendingOom] = None
    history: tuple = field(default_factory=tuple)   # ((stage, step, device_bs), ...) of OOMs seen


def _deadline(grace: Grace, now: float) -> Optional[float]:
    return None if grace == "off" else now + float(grace)


def _from_what(ckpt_step: Optional[int]) -> str:
    return f"checkpoint step {ckpt_step}" if ckpt_step is not None else "the start (no checkpoint yet)"


def _restart(state: OomState, device_bs: int, why: str) -> tuple:
    p = state.pending
    start = f"step 0 ({p.note})" if p.scratch else _from_what(p.ckpt_step)
    msg = f"{p.stage}: restarting at device_batch_size={device_bs} (was {p.device_bs}) from {start}; {why}"
    return (replace(state, phase="restarting"),
            [Restart(device_bs, None if p.scratch else "latest"),
             Notify("fallback" if device_bs != p.device_bs else "retry", msg)])


def decide(state: OomState, event) -> tuple:
    """Apply one event; returns (new_state, [actions]). Pure: time comes in the events."""
    if isinstance(event, OomDetected):
        history = state.history + ((event.stage, event.step, event.device_bs),)
        where = f"{event.stage} step {event.step}" if event.step is not None else event.stage
        if event.device_bs is None:
            reason = f"out of memory in {where}, which has no device batch size to lower"
            return (replace(state, phase="stopped", pending=None, history=history),
                    [Stop(reason), Notify("stopped", reason)])
        ladder = tuple(fallback_ladder(event.device_bs, event.total_batch_size, event.seq_len,
                                       event.world_size))
        if not ladder:
            if event.device_bs <= 1:
                reason = (f"out of memory at device_batch_size=1 ({where}): nothing smaller to fall back to; "
                          f"lower --max_seq_len or the model depth")
            else:
                reason = (f"out of memory at device_batch_size={event.device_bs} ({where}): no smaller power "
                          f"of two divides the total batch {event.total_batch_size}")
            return (replace(state, phase="stopped", pending=None, history=history),
                    [Stop(reason), Notify("stopped", reason)])
        scratch = not event.can_resume
        ask = scratch and not state.scratch_consent   # never restart from 0 unasked
        pending = PendingOom(event.stage, event.step, event.device_bs, None if scratch else event.ckpt_step, ladder,
                             event.now, None if ask else _deadline(state.grace, event.now), scratch, event.note)
        state = replace(state, phase="waiting", pending=pending, history=history)
        oom_msg = (f"{where}: CUDA out of memory at device_batch_size={event.device_bs}; "
                   f"fallback ladder {list(ladder)}")
        if ask:
            return state, [Notify("oom", f"{oom_msg}; {event.note}: choose a batch size to restart from step 0, "
                                         f"or stop (waiting for you)"), Wait(None)]
        if scratch:
            oom_msg += f"; {event.note}"
        if state.grace == "off":
            return state, [Notify("oom", oom_msg + "; waiting for a command (grace off)"), Wait(None)]
        if float(state.grace) <= 0:
            new_state, actions = _restart(state, ladder[0], "grace 0: acting at once")
            return new_state, [Notify("oom", oom_msg)] + actions
        return state, [Notify("oom", oom_msg + f"; taking B={ladder[0]} in {float(state.grace):g}s"),
                       Wait(pending.deadline)]

    if isinstance(event, SetGrace):
        grace = parse_grace(event.grace)
        state = replace(state, grace=grace, scratch_consent=True)
        if state.phase != "waiting":
            return state, []
        p = state.pending
        deadline = _deadline(grace, p.detected_at)
        state = replace(state, pending=replace(p, deadline=deadline))
        if deadline is not None and event.now >= deadline:
            return _restart(state, p.ladder[0], "grace period over")
        return state, [Wait(deadline)]

    if isinstance(event, GraceTick):
        p = state.pending
        if state.phase == "waiting" and p.deadline is not None and event.now >= p.deadline:
            return _restart(state, p.ladder[0], "nobody chose within the grace period")
        return state, []

    if isinstance(event, UserFallback):
        if state.phase != "waiting":
            return state, [Reject("no out-of-memory decision is pending")]
        p = state.pending
        if event.device_bs not in p.ladder:
            return state, [Reject(f"device_batch_size={event.device_bs} is not on the fallback ladder "
                                  f"{list(p.ladder)} (smaller powers of two that divide the total batch)")]
        return _restart(state, event.device_bs, "chosen by the user")

    if isinstance(event, UserRetry):
        if state.phase != "waiting":
            return state, [Reject("no out-of-memory decision is pending")]
        return _restart(state, state.pending.device_bs, "retry at the same batch size requested by the user")

    if isinstance(event, UserStop):
        where = state.pending.stage if state.pending else "run"
        return (replace(state, phase="stopped"),
                [Stop(event.reason), Notify("stopped", f"{where}: {event.reason}")])

    if isinstance(event, Resumed):
        return replace(state, phase="idle", pending=None), []

    raise TypeError(f"unknown OOM policy event: {event!r}")
