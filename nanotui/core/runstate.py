"""The typed run state (state.json), stage records, pending OOM, supervisor requests and the event vocabulary.

The single source for what a run's state looks like: the supervisor writes it, `nanotui stop` (without a
supervisor) edits it, `rundir`, the CLI and the TUI read it. Pure: dataclasses with JSON round-trips and shape
validation (`RunState.from_json` raises `StateError` with a one-line reason for a state that is valid JSON but
the wrong shape). Unknown keys are kept in `extra` so later fields (e.g. a VRAM planner's `probe`) survive a
round-trip through an older reader. See docs/CONTRACTS.md "Run state".
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Optional, Union

__all__ = [
    "PHASES", "LIVE_PHASES", "END_PHASES", "STAGE_STATES", "STAGE_NAMES", "TRAIN_STAGES", "ckpt_family",
    "log_kind", "StateError", "StageRecord", "PendingOomRecord", "CheckpointRef", "RunState",
    "StopRequest", "RestartRequest", "OomStopRequest", "Request", "EVENT_FIELDS", "make_event",
    "EXIT_DONE", "EXIT_OTHER", "EXIT_USAGE", "EXIT_OOM", "EXIT_STOPPED", "DISK_FULL",
]

# ---- vocabularies ---------------------------------------------------------------------------------
PHASES = ("starting", "running", "waiting", "stopped", "done", "failed")
LIVE_PHASES = ("starting", "running", "waiting")          # a supervisor (or an orphaned stage) is at work
END_PHASES = ("stopped", "done", "failed")
STAGE_STATES = ("pending", "running", "done", "failed", "stopped")

STAGE_NAMES = ("data", "tok_train", "tok_eval", "base_train", "base_eval", "mid_train", "chat_eval_mid",
               "chat_sft", "chat_eval_sft", "report")
# training stage -> (checkpoint family = `<family>_checkpoints`, log kind for LogParser)
TRAIN_STAGES = {"base_train": ("base", "base"), "mid_train": ("mid", "mid"), "chat_sft": ("chatsft", "sft")}

# trainer exit codes (docs/CONTRACTS.md "Exit codes")
EXIT_DONE, EXIT_OTHER, EXIT_USAGE, EXIT_OOM, EXIT_STOPPED = 0, 1, 2, 3, 4
DISK_FULL = "disk full"   # the word state.reason / events / notifications use for ENOSPC


def ckpt_family(stage: str) -> Optional[str]:
    """`base` / `mid` / `chatsft` for a training stage name, else None."""
    t = TRAIN_STAGES.get(stage)
    return t[0] if t else None


def log_kind(stage: str) -> Optional[str]:
    """`base` / `mid` / `sft` (LogParser kind) for a training stage name, else None."""
    t = TRAIN_STAGES.get(stage)
    return t[1] if t else None


class StateError(ValueError):
    """state.json is valid JSON but not a run state; str() is the one-line reason."""


# ---- helpers --------------------------------------------------------------------------------------
def _opt_int(obj: Mapping, key: str, where: str) -> Optional[int]:
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise StateError(f"{where}{key} is {v!r}, expected an integer or null")
    return v


def _opt_num(obj: Mapping, key: str, where: str) -> Optional[float]:
    v = obj.get(key)
    if v is None or isinstance(v, str):  # hand-made/old states may hold ISO times; they are only displayed
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise StateError(f"{where}{key} is {v!r}, expected a number or null")
    return v


def _opt_str(obj: Mapping, key: str, where: str) -> Optional[str]:
    v = obj.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise StateError(f"{where}{key} is {v!r}, expected a string or null")
    return v


def _obj(v: Any, where: str) -> Mapping:
    if not isinstance(v, Mapping):
        raise StateError(f"{where} is {type(v).__name__}, expected a JSON object")
    return v


# ---- records --------------------------------------------------------------------------------------
@dataclass
class StageRecord:
    """One row of `state.stages`: what happened to a plan stage in this run."""
    name: str
    state: str = "pending"             # STAGE_STATES
    started: Optional[float] = None
    ended: Optional[float] = None
    exit_code: Optional[int] = None
    attempts: int = 0
    device_bs: Optional[int] = None
    reason: Optional[str] = None       # why it failed/stopped (one line)

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, obj: Any, where: str = "stages[?].") -> "StageRecord":
        o = _obj(obj, where.rstrip("."))
        name = o.get("name")
        if not isinstance(name, str) or not name:
            raise StateError(f"{where}name is {name!r}, expected a stage name")
        state = o.get("state") or "pending"
        if state not in STAGE_STATES:
            raise StateError(f"{where}state is {state!r}, expected one of {', '.join(STAGE_STATES)}")
        return cls(name=name, state=state, started=_opt_num(o, "started", where), ended=_opt_num(o, "ended", where),
                   exit_code=_opt_int(o, "exit_code", where), attempts=_opt_int(o, "attempts", where) or 0,
                   device_bs=_opt_int(o, "device_bs", where), reason=_opt_str(o, "reason", where))


@dataclass
class PendingOomRecord:
    """An OOM waiting for a decision (fallback / retry / stop), as `state.pending_oom`."""
    stage: str
    step: Optional[int]
    device_bs: Optional[int]
    ladder: list
    deadline: Optional[float]          # None: wait for a command (grace off)
    note: Optional[str] = None         # e.g. "cannot resume: a restart begins again at step 0" (upstream 2025-11)

    def to_json(self) -> dict:
        out = {"stage": self.stage, "step": self.step, "device_bs": self.device_bs, "ladder": list(self.ladder),
               "deadline": self.deadline}
        if self.note:
            out["note"] = self.note
        return out

    @classmethod
    def from_json(cls, obj: Any) -> "PendingOomRecord":
        o = _obj(obj, "pending_oom")
        ladder = o.get("ladder") or []
        if not isinstance(ladder, list) or not all(isinstance(b, int) and not isinstance(b, bool) for b in ladder):
            raise StateError(f"pending_oom.ladder is {ladder!r}, expected a list of batch sizes")
        return cls(stage=str(o.get("stage") or ""), step=_opt_int(o, "step", "pending_oom."),
                   device_bs=_opt_int(o, "device_bs", "pending_oom."), ladder=list(ladder),
                   deadline=_opt_num(o, "deadline", "pending_oom."),
                   note=str(o["note"]) if o.get("note") else None)


@dataclass
class CheckpointRef:
    """The newest checkpoint the current run saw being written (`state.last_checkpoint`)."""
    stage: str
    step: int
    path: Optional[str] = None

    def to_json(self) -> dict:
        return {"stage": self.stage, "step": self.step, "path": self.path}

    @classmethod
    def from_json(cls, obj: Any) -> "CheckpointRef":
        o = _obj(obj, "last_checkpoint")
        step = _opt_int(o, "step", "last_checkpoint.")
        if step is None:
            raise StateError("last_checkpoint.step is missing")
        return cls(stage=str(o.get("stage") or ""), step=step, path=_opt_str(o, "path", "last_checkpoint."))


_SCALARS_INT = ("stage_index", "attempt", "supervisor_pid", "stage_pid", "device_bs", "seq_len", "step", "total",
                "total_batch_size")
_SCALARS_STR = ("stage", "wandb_run", "reason", "log", "problem")


@dataclass
class RunState:
    """state.json. `stage_index` is where the run is (or stopped); `stages` has one record per plan stage."""
    run_id: str
    phase: str = "starting"
    stage_index: int = 0
    stage: Optional[str] = None
    attempt: int = 0
    supervisor_pid: Optional[int] = None
    stage_pid: Optional[int] = None
    stage_pid_created: Optional[float] = None
    device_bs: Optional[int] = None
    seq_len: Optional[int] = None
    total_batch_size: Optional[int] = None
    wandb_run: Optional[str] = None
    last_checkpoint: Optional[CheckpointRef] = None
    pending_oom: Optional[PendingOomRecord] = None
    reason: Optional[str] = None
    problem: Optional[str] = None      # a condition the run lives with, e.g. "disk full" (state/TUI show it)
    step: Optional[int] = None
    total: Optional[int] = None
    log: Optional[str] = None          # current attempt's log, relative to the run dir
    grace: Any = None                  # seconds or "off"
    carried_bs: dict = field(default_factory=dict)   # seq_len (str) -> device_bs a fallback found to fit
    probes: list = field(default_factory=list)       # --device_batch_size=auto records, newest per stage
    updated: Optional[float] = None
    stages: list = field(default_factory=list)       # [StageRecord]
    extra: dict = field(default_factory=dict)        # unknown keys, kept verbatim

    @classmethod
    def initial(cls, run_id: str, plan_stages: list) -> "RunState":
        return cls(run_id=run_id, stage=plan_stages[0]["name"] if plan_stages else None, updated=time.time(),
                   stages=[StageRecord(name=s["name"], device_bs=s.get("device_bs")) for s in plan_stages])

    # -- queries
    @property
    def live(self) -> bool:
        return self.phase in LIVE_PHASES

    def record(self, idx: Optional[int] = None) -> Optional[StageRecord]:
        i = self.stage_index if idx is None else idx
        return self.stages[i] if 0 <= i < len(self.stages) else None

    # -- JSON
    def to_json(self) -> dict:
        out = dict(self.extra)
        for f in fields(self):
            if f.name == "extra":
                continue
            v = getattr(self, f.name)
            if f.name == "stages":
                v = [s.to_json() for s in v]
            elif isinstance(v, (CheckpointRef, PendingOomRecord)):
                v = v.to_json()
            elif f.name == "carried_bs":
                v = dict(v)
            elif f.name == "probes":
                v = list(v)
            out[f.name] = v
        return out

    @classmethod
    def from_json(cls, obj: Any, n_stages: Optional[int] = None) -> "RunState":
        """Validate and type a decoded state.json. `n_stages`: the plan's stage count (checks the index)."""
        if not isinstance(obj, Mapping):
            raise StateError(f"state.json holds a JSON {type(obj).__name__}, expected an object")
        o = obj
        if not o:
            raise StateError("state.json is an empty object")
        phase = o.get("phase") or "starting"
        if phase not in PHASES:
            raise StateError(f"phase is {phase!r}, expected one of {', '.join(PHASES)}")
        kw: dict = {"phase": phase}
        for k in _SCALARS_INT:
            kw[k] = _opt_int(o, k, "")
        for k in _SCALARS_STR:
            kw[k] = _opt_str(o, k, "")
        kw["stage_index"] = kw["stage_index"] or 0
        kw["attempt"] = kw["attempt"] or 0
        if kw["stage_index"] < 0:
            raise StateError(f"stage_index is {kw['stage_index']}, expected >= 0")
        kw["stage_pid_created"] = _opt_num(o, "stage_pid_created", "")
        kw["updated"] = _opt_num(o, "updated", "")
        stages_raw = o.get("stages")
        if stages_raw is None:
            stages_raw = []
        if not isinstance(stages_raw, list):
            raise StateError(f"stages is {type(stages_raw).__name__}, expected a list")
        kw["stages"] = [StageRecord.from_json(s, f"stages[{i}].") for i, s in enumerate(stages_raw)]
        limit = n_stages if n_stages is not None else len(kw["stages"])
        if n_stages is not None and kw["stages"] and len(kw["stages"]) != n_stages:
            raise StateError(f"stages has {len(kw['stages'])} records, the plan has {n_stages} stages")
        # stage_index == len(stages) is allowed only for a finished run
        if limit and (kw["stage_index"] > limit or (kw["stage_index"] == limit and phase != "done")):
            raise StateError(f"stage_index {kw['stage_index']} is past the plan's {limit} stage(s)")
        kw["last_checkpoint"] = CheckpointRef.from_json(o["last_checkpoint"]) if o.get("last_checkpoint") else None
        kw["pending_oom"] = PendingOomRecord.from_json(o["pending_oom"]) if o.get("pending_oom") else None
        grace = o.get("grace")
        if grace is not None and grace != "off" and (isinstance(grace, bool) or not isinstance(grace, (int, float))):
            raise StateError(f"grace is {grace!r}, expected seconds or 'off'")
        kw["grace"] = grace
        carried = o.get("carried_bs") or {}
        if not isinstance(carried, Mapping):
            raise StateError(f"carried_bs is {carried!r}, expected an object")
        kw["carried_bs"] = {str(k): v for k, v in carried.items() if isinstance(v, int) and not isinstance(v, bool)}
        probes = o.get("probes") or []
        if not isinstance(probes, list):
            raise StateError(f"probes is {type(probes).__name__}, expected a list")
        kw["probes"] = [p for p in probes if isinstance(p, Mapping)]
        run_id = o.get("run_id")
        if run_id is not None and not isinstance(run_id, str):
            raise StateError(f"run_id is {run_id!r}, expected a string")
        known = {f.name for f in fields(cls)}
        extra = {k: v for k, v in o.items() if k not in known}
        return cls(run_id=run_id or "", extra=extra, **kw)


# ---- requests to the supervisor's main loop (set by control threads, signals and the OOM policy) -----------
@dataclass(frozen=True)
class StopRequest:
    reason: str


@dataclass(frozen=True)
class RestartRequest:
    """Restart the current stage at `device_bs` from `resume` (a step or "latest")."""
    device_bs: Optional[int]
    resume: Union[int, str]
    why: str


@dataclass(frozen=True)
class OomStopRequest:
    """The OOM policy gave up (nothing smaller to fall back to)."""
    reason: str


Request = Union[StopRequest, RestartRequest, OomStopRequest]


# ---- events (events.jsonl) ------------------------------------------------------------------------
# kind -> the payload fields it may carry (besides `t`, `type`, `message`). One vocabulary for every writer and
# reader: a restart's resume point is always `step` ("latest" or an int), batch changes are `from_bs`/`to_bs`.
EVENT_FIELDS: dict = {
    "started": ("run_id", "profile", "stages", "supervisor_pid"),
    "stage_started": ("stage", "index", "attempt", "argv", "device_bs", "log", "pid", "carried_from"),
    "spawn_failed": ("stage", "index", "attempt", "error"),
    "checkpoint": ("stage", "step", "path"),
    "adopted": ("stage", "pid", "attempt", "still_running"),
    "stopping": ("stage", "why", "pgid", "pids"),
    "killed": ("stage", "after_s", "pids"),
    "escaped": ("stage", "pids"),
    "stopped": ("stage", "exit_code", "step", "last_checkpoint", "reason", "pgid", "how"),
    "stage_done": ("stage", "index", "step"),
    "done": (),
    "crashed": ("stage", "exit_code", "signal", "error", "step"),
    "failed": ("stage", "reason"),
    "oom": ("stage", "step", "device_bs", "exit_code", "emergency_step", "ckpt_step"),
    "waiting": ("stage", "ladder", "deadline", "grace", "pending_oom"),
    "fallback": ("stage", "from_bs", "to_bs", "step", "why", "ckpt_step"),
    "retry": ("stage", "from_bs", "to_bs", "step", "why", "ckpt_step"),
    "resumed": ("stage", "step", "device_bs"),
    "carried_bs": ("stage", "device_bs", "seq_len", "from_stage"),
    "command": ("cmd", "args"),
    "signal": ("signal", "action"),
    "disk_full": ("where", "error"),
    "disk_ok": ("where",),
    # --device_batch_size=auto (nanotui/runtime/probes.py): a stage's probe record, and a later stage reusing it
    "device_bs_probe": ("stage", "key", "device_bs", "eval_bs", "eval_detail", "headroom", "limit_gib",
                        "capacity_gib", "detail", "rows"),
    "device_bs_reused": ("stage", "device_bs", "from_stage", "key"),
    # W&B (core/wandbinfo.py): the run's URL once known; a stage whose W&B start failed (it trains on without)
    "wandb": ("stage", "name", "url"),
    "wandb_failed": ("stage", "error"),
    # upstream scripts (docs/DIALECTS.md): the dialect a stage runs in; a training stage of a whole script
    "dialect": ("stage", "version", "save_every"),
    "substage": ("stage", "run_id", "state", "exit_code", "argv"),
}


def make_event(kind: str, **payload: Any) -> dict:
    """`{"type": kind, **payload}` after checking the kind and its fields against EVENT_FIELDS (ValueError)."""
    allowed = EVENT_FIELDS.get(kind)
    if allowed is None:
        raise ValueError(f"unknown event kind {kind!r}")
    bad = [k for k in payload if k not in allowed and k != "message"]
    if bad:
        raise ValueError(f"event {kind!r} has no field(s) {', '.join(bad)}")
    return {"type": kind, **{k: v for k, v in payload.items() if not (k == "message" and v is None)}}
