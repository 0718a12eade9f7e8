"""Checkpoints: atomic upstream-named files, meta as commit marker, validation, retention, safe load, run lineage, lock."""
import errno
import fcntl
import json
import os
import re
import secrets
import socket
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from nanochat.common import UsageError, get_base_dir

META_FORMAT = "nanotui-checkpoint-1"
STAGE_DIRS = {"base": "base_checkpoints", "mid": "mid_checkpoints", "sft": "chatsft_checkpoints",
              "chatsft": "chatsft_checkpoints", "rl": "chatrl_checkpoints"}
_TMP_MARK = ".tmp."
_STEP_FILE = re.compile(r"^(model|meta|optim)_(\d{6,})(?:_rank(\d+))?\.(pt|json)$")
_TMP_FILE = re.compile(r"^\.(.+)" + re.escape(_TMP_MARK) + r"(\d+)$")
RUN_ID_ENV = "NANOCHAT_RUN_ID"   # the lineage id (the supervisor sets it to its run id for every stage)
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
LOCK_NAME = ".lock"              # flock held by the training stage that owns the directory
_ASIDE = re.compile(r"\.run-")   # `<tag>.run-<id>[.abandoned][.N]`: checkpoints moved aside, not a model of its own


class CheckpointError(Exception):
    """A checkpoint step that is missing, uncommitted or damaged (the message says which and why)."""


# ---------------------------------------------------------------------------------------------------------------------
# names

def model_name(step: int) -> str:
    return f"model_{step:06d}.pt"


def optim_name(step: int, rank: int) -> str:
    return f"optim_{step:06d}_rank{rank}.pt"


def meta_name(step: int) -> str:
    return f"meta_{step:06d}.json"


_TRAINING_SCRIPT = {"base_checkpoints": "base_train", "mid_checkpoints": "mid_train",
                    "chatsft_checkpoints": "chat_sft", "chatrl_checkpoints": "chat_rl"}


def _train_hint(stage_root: str) -> str:
    """`train it first: python -m nanochat.scripts.<stage script>` for a stage's checkpoint root."""
    script = _TRAINING_SCRIPT.get(os.path.basename(os.path.normpath(stage_root)))
    return f"train it first: python -m nanochat.scripts.{script}" if script else "train that stage first"


def check_model_tag(model_tag: str) -> str:
    """A model tag names one directory under a stage's checkpoint root; UsageError for anything path-like."""
    tag = str(model_tag)
    if tag in ("", ".", "..") or "/" in tag or os.sep in tag or "\0" in tag:
        raise UsageError(f"--model_tag must be a plain directory name such as d20, got {tag!r}")
    return tag


def checkpoint_dir(stage: str, model_tag: str) -> str:
    """`$BASE/{base,mid,chatsft}_checkpoints/<model_tag>` (not created here)."""
    if stage not in STAGE_DIRS:
        raise ValueError(f"unknown checkpoint stage {stage!r}; one of {sorted(STAGE_DIRS)}")
    return os.path.join(get_base_dir(), STAGE_DIRS[stage], check_model_tag(model_tag))


# ---------------------------------------------------------------------------------------------------------------------
# atomic file writes

def _fsync_dir(directory: str):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories
    finally:
        os.close(fd)


def _atomic_write(path: str, write_fn) -> int:
    """Write through `write_fn(fileobj)` to a hidden temporary name, fsync, rename over `path`, fsync the directory.

    Returns the size in bytes of the committed file. A crash leaves either the old file or none, plus at most a
    stray `.<name>.tmp.<pid>` that later saves clean up.
    """
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}{_TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        size = os.path.getsize(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)
    return size


def _write_json_atomic(path: str, data: dict) -> int:
    payload = (json.dumps(data, indent=2, sort_keys=False) + "\n").encode("utf-8")
    return _atomic_write(path, lambda f: f.write(payload))


def _write_torch_atomic(path: str, obj) -> int:
    return _atomic_write(path, lambda f: torch.save(obj, f))


# ---------------------------------------------------------------------------------------------------------------------
# validation and discovery

def read_meta(ckpt_dir: str, step: int) -> dict:
    """The parsed meta JSON of a step (CheckpointError when missing or unparsable; no validation of the files)."""
    path = os.path.join(ckpt_dir, meta_name(step))
    try:
        with open(path, "r", encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{meta_name(step)} is missing (step not committed)")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{meta_name(step)} does not parse ({type(exc).__name__}: {exc})")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_name(step)} is not a JSON object")
    return meta


def validate_step(ckpt_dir: str, step: int) -> dict:
    """Meta of a committed, intact step; CheckpointError with the reason otherwise.

    Intact means: the meta parses, names its step, and every file it lists exists with the recorded size. A meta
    without a file list (written by upstream nanochat) is accepted when its model file exists and is not empty.
    """
    meta = read_meta(ckpt_dir, step)
    if "step" in meta and meta["step"] != step:
        raise CheckpointError(f"{meta_name(step)} records step {meta['step']!r}")
    files = meta.get("files")
    if files is None:
        path = os.path.join(ckpt_dir, model_name(step))
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            raise CheckpointError(f"{model_name(step)} is missing or empty")
        return meta
    if not isinstance(files, dict) or model_name(step) not in files:
        raise CheckpointError(f"{meta_name(step)} does not list {model_name(step)}")
    for name, size in files.items():
        if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
            raise CheckpointError(f"{meta_name(step)} lists an invalid file name {name!r}")
        path = os.path.join(ckpt_dir, name)
        try:
            actual = os.path.getsize(path)
        except OSError:
            raise CheckpointError(f"{name} is missing")
        if actual != size:
            raise CheckpointError(f"{name} has {actual} bytes, meta records {size}")
    return meta


def _steps_with_meta(ckpt_dir: str) -> list:
    try:
        names = os.listdir(ckpt_dir)
    except OSError:
        return []
    steps = set()
    for name in names:
        m = _STEP_FILE.match(name)
        if m and m.group(1) == "meta":
            steps.add(int(m.group(2)))
    return sorted(steps)


def list_valid_steps(ckpt_dir: str, report: bool = False) -> list:
    """Ascending steps that validate. With report=True each invalid step gets one line on stderr."""
    valid = []
    for step in _steps_with_meta(ckpt_dir):
        try:
            validate_step(ckpt_dir, step)
        except CheckpointError as exc:
            if report:
                print(f"skipping checkpoint step {step} in {ckpt_dir}: {exc}", file=sys.stderr, flush=True)
            continue
        valid.append(step)
    return valid


def find_latest_step(ckpt_dir: str):
    """Newest valid step, or None. Invalid newer steps are skipped with a one-line message on stderr."""
    return _newest_valid(ckpt_dir, _steps_with_meta(ckpt_dir))


# ---------------------------------------------------------------------------------------------------------------------
# lineage: which run a step belongs to

def check_run_id(text) -> str:
    """A run id is one plain name (letters, digits, `.`, `_`, `-`; it becomes part of a directory name)."""
    rid = str(text).strip()
    if not _RUN_ID.match(rid):
        raise UsageError(f"run id must be letters, digits, '.', '_' or '-' (at most 100), got {text!r}")
    return rid


def run_id_from(flag_value=None):
    """The lineage id of this process: the `--run_id` flag, else `$NANOCHAT_RUN_ID`, else None (standalone)."""
    if flag_value not in (None, ""):
        return check_run_id(flag_value)
    env = os.environ.get(RUN_ID_ENV, "").strip()
    if env:
        try:
            return check_run_id(env)
        except UsageError as exc:
            raise UsageError(f"{RUN_ID_ENV}: {exc}")
    return None


def new_run_id() -> str:
    """A fresh id for a standalone run (no supervisor, no NANOCHAT_RUN_ID): `YYYYmmdd-HHMMSS-<6 hex>`."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def step_run_id(ckpt_dir: str, step: int):
    """The `run_id` recorded in a step's meta; None when the meta has none (upstream, older versions) or is bad."""
    try:
        rid = read_meta(ckpt_dir, step).get("run_id")
    except CheckpointError:
        return None
    return rid if isinstance(rid, str) and rid else None


def _committed_lineages(ckpt_dir: str) -> dict:
    """{step: run_id | None} for every step whose meta parses (valid or not)."""
    out = {}
    for step in _steps_with_meta(ckpt_dir):
        try:
            meta = read_meta(ckpt_dir, step)
        except CheckpointError:
            continue  # garbage meta: not attributable, stays where it is (and is never loaded)
        rid = meta.get("run_id")
        out[step] = rid if isinstance(rid, str) and rid else None
    return out


def _newest_valid(ckpt_dir: str, steps) -> int:
    """Newest of `steps` that validates (newer invalid ones get the `skipping checkpoint step` line), or None."""
    for step in sorted(steps, reverse=True):
        try:
            validate_step(ckpt_dir, step)
            return step
        except CheckpointError as exc:
            print(f"skipping checkpoint step {step} in {ckpt_dir}: {exc}", file=sys.stderr, flush=True)
    return None


def latest_step_of_run(ckpt_dir: str, run_id):
    """Newest valid step of lineage `run_id` (run_id None: of any lineage), or None."""
    if run_id is None:
        return find_latest_step(ckpt_dir)
    return _newest_valid(ckpt_dir, [s for s, rid in _committed_lineages(ckpt_dir).items() if rid == run_id])


def _steps_text(steps) -> str:
    steps = sorted(steps)
    return f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}..{steps[-1]} ({len(steps)})"


@dataclass
class ResumePlan:
    """What a training stage starts from: `step` None = fresh; `run_id` = the lineage its checkpoints carry;
    `aside` = [(lineage label, [steps], abandoned: bool)] to move out of the directory before training."""
    run_id: str
    step: int = None
    continued: bool = False        # standalone `latest`: run id taken over from the newest checkpoint
    aside: list = field(default_factory=list)


def plan_resume(ckpt_dir: str, requested, run_id=None) -> ResumePlan:
    """Decide where a training stage starts (reads only; `apply_plan` moves files). UsageError for bad requests.

    requested None: fresh start (new run id unless one is given). `latest`: with `run_id` the newest valid step of
    that lineage, without one the newest valid step of any lineage, whose run id is continued; none: fresh start.
    A number S: that step, which must be valid and (with `run_id`) of that lineage. Then every committed step that
    is not of the chosen lineage is set aside under its own run id, and so are the lineage's own steps after the
    start step (abandoned: a resume to an older step, or a fresh start of the same run id).
    """
    lineages = _committed_lineages(ckpt_dir)
    step, rid, continued = None, run_id, False
    if requested is None or requested == "" or str(requested) == "-1":
        pass
    elif str(requested) == "latest":
        step = latest_step_of_run(ckpt_dir, run_id)
        if step is not None and run_id is None:
            rid, continued = lineages.get(step), True
    else:
        step = _named_valid_step(ckpt_dir, requested)
        owner = lineages.get(step)
        if run_id is not None and owner != run_id:
            whose = f"run {owner}" if owner else "no run (its meta has no run id)"
            how = (f"continue that run with --run_id={owner}" if owner else
                   f"resume it without a run id (unset {RUN_ID_ENV})")
            raise UsageError(f"checkpoint step {step} in {ckpt_dir} belongs to {whose}, not to this run {run_id}; "
                             f"{how}, or start fresh")
        if run_id is None:
            rid, continued = owner, True
    adopt_legacy = step is not None and rid is None  # resuming a step written without run id: its lineage is ours
    if rid is None:
        rid = new_run_id()
    own = {s for s, r in lineages.items() if r == rid or (adopt_legacy and r is None)}
    groups = {}
    for s, r in lineages.items():
        if s == step:
            continue
        if s in own:
            if step is None or s > step:
                groups.setdefault((r, True), []).append(s)
        else:
            groups.setdefault((r, False), []).append(s)
    aside = [(label, sorted(steps), abandoned) for (label, abandoned), steps in
             sorted(groups.items(), key=lambda kv: (str(kv[0][0]), kv[0][1]))]
    return ResumePlan(run_id=rid, step=step, continued=continued and not adopt_legacy, aside=aside)


def _safe_label(label) -> str:
    if label is None:
        return "none"
    text = re.sub(r"[^A-Za-z0-9._-]", "_", str(label))[:100]
    return text or "none"


def _aside_dir(ckpt_dir: str, label, abandoned: bool, names) -> str:
    """`<tag>.run-<id>` (`.abandoned` for a lineage's own abandoned steps), `.2`, `.3`... when names collide."""
    parent, tag = os.path.split(os.path.normpath(ckpt_dir))
    base = f"{tag}.run-{_safe_label(label)}" + (".abandoned" if abandoned else "")
    for n in range(1, 10000):
        cand = os.path.join(parent, base if n == 1 else f"{base}.{n}")
        try:
            existing = set(os.listdir(cand))
        except FileNotFoundError:
            return cand
        except OSError:
            continue
        if not existing & set(names):
            return cand
    raise OSError(f"no free directory name for {base} in {parent}")


def set_aside(ckpt_dir: str, steps, label, abandoned: bool) -> str:
    """Move the files of `steps` into a sibling directory (upstream layout, usable with --model_tag=<its name>);
    each step's meta moves last, so a crash part-way leaves it committed where it was. Returns that directory."""
    steps = set(steps)
    by_step = {}
    for name in os.listdir(ckpt_dir):
        m = _STEP_FILE.match(name)
        if m and int(m.group(2)) in steps:
            by_step.setdefault(int(m.group(2)), []).append(name)
    names = [n for ns in by_step.values() for n in ns]
    dest = _aside_dir(ckpt_dir, label, abandoned, names)
    os.makedirs(dest, exist_ok=True)
    for step in sorted(by_step):
        for name in sorted(by_step[step], key=lambda n: n.startswith("meta_")):
            os.rename(os.path.join(ckpt_dir, name), os.path.join(dest, name))
    _fsync_dir(dest)
    _fsync_dir(ckpt_dir)
    return dest


def moved_aside_dirs(ckpt_dir: str, run_id) -> list:
    """Sibling directories `<tag>.run-<run_id>[.N]` holding valid steps of `run_id`: where another run's start put
    this run's checkpoints (so a `latest` that finds none here can say where they are)."""
    parent, tag = os.path.split(os.path.normpath(ckpt_dir))
    base = f"{tag}.run-{_safe_label(run_id)}"
    try:
        names = sorted(os.listdir(parent))
    except OSError:
        return []
    return [os.path.join(parent, n) for n in names if re.fullmatch(re.escape(base) + r"(\.\d+)?", n)
            and latest_step_of_run(os.path.join(parent, n), run_id) is not None]


def apply_plan(ckpt_dir: str, plan: ResumePlan, quiet: bool = False) -> list:
    """Move the plan's `aside` groups out of `ckpt_dir` (rank 0, under the directory lock); one line each on
    stdout saying where they went and how to use them. Nothing is deleted. Returns the destination directories."""
    dests = []
    for label, steps, abandoned in plan.aside:
        dest = set_aside(ckpt_dir, steps, label, abandoned)
        dests.append(dest)
        if quiet:
            continue
        tag = os.path.basename(dest)
        if abandoned:
            why = ("abandoned by this run's fresh start" if plan.step is None else
                   f"abandoned by resuming run {plan.run_id} from step {plan.step}")
            print(f"Checkpoints moved aside: {_steps_text(steps)} of run {label or 'without run id'} ({why}) -> "
                  f"{dest}; use them with --model_tag={tag}", flush=True)
        else:
            owner = f"run {label}" if label else "no run id (upstream or older version)"
            print(f"Checkpoints moved aside: {_steps_text(steps)} of {owner} (not this run {plan.run_id}) -> "
                  f"{dest}; use them with --model_tag={tag}", flush=True)
    return dests


# ---------------------------------------------------------------------------------------------------------------------
# one training stage per checkpoint directory

class CheckpointLock:
    """An exclusive flock on `<ckpt_dir>/.lock`, holding `{pid, run_id, host, started}` as JSON, for a training
    stage's lifetime. A second trainer gets UsageError naming the holder; a lock file left by a dead process is
    not held (the kernel drops a flock with its process) and is simply taken over."""

    def __init__(self, ckpt_dir: str, run_id=None):
        self.path = os.path.join(ckpt_dir, LOCK_NAME)
        self.run_id = run_id
        self.fd = None
        self.started = None

    @staticmethod
    def holder(ckpt_dir: str) -> dict:
        """The lock file's JSON (may describe a dead process: check with `is_locked`)."""
        try:
            with open(os.path.join(ckpt_dir, LOCK_NAME), "r", encoding="utf-8") as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    @staticmethod
    def is_locked(ckpt_dir: str) -> bool:
        try:
            fd = os.open(os.path.join(ckpt_dir, LOCK_NAME), os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except OSError:
            return True
        finally:
            os.close(fd)

    def acquire(self):
        directory = os.path.dirname(self.path)
        os.makedirs(directory, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise
            info = self.holder(directory)
            who = f"run {info.get('run_id') or '(no run id)'}, pid {info.get('pid', '?')}"
            if info.get("host"):
                who += f" on {info['host']}"
            raise UsageError(f"checkpoint directory {directory} is in use by another trainer ({who}); stop that "
                             f"run first or train under another --model_tag")
        self.fd = fd
        self.started = time.time()
        self.update(self.run_id)
        return self

    def update(self, run_id):
        """Rewrite the lock's JSON (e.g. once the run id is known). Best effort: a full disk does not lose the lock."""
        self.run_id = run_id
        if self.fd is None:
            return
        payload = json.dumps({"pid": os.getpid(), "run_id": run_id, "host": socket.gethostname(),
                              "started": self.started}).encode("utf-8")
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, payload + b"\n", 0)
        except OSError:
            pass

    def release(self):
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None


# ---------------------------------------------------------------------------------------------------------------------
# saving

def _dist_ready(world_size: int) -> bool:
    return world_size > 1 and dist.is_available() and dist.is_initialized()


def disk_full_error(exc):
    """The ENOSPC/EDQUOT OSError behind `exc` (itself or anywhere in its cause/context chain: torch.save turns it
    into a RuntimeError of its zip writer), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def is_disk_full(exc) -> bool:
    return disk_full_error(exc) is not None


def _invalidate(ckpt_dir: str, step: int):
    """Un-commit `step` (remove its meta, fsync the directory) before any of its files is replaced: a crash while
    re-saving then leaves an uncommitted step, never new weights + old optimizer state under the old meta."""
    path = os.path.join(ckpt_dir, meta_name(step))
    if os.path.lexists(path):
        os.unlink(path)
        _fsync_dir(ckpt_dir)


def save_checkpoint(ckpt_dir, step, model_state, optim_states, meta, rank=0, world_size=1, keep_last=3,
                    quiet=False):
    """Commit checkpoint `step` in `ckpt_dir`; every rank calls it (collective under DDP).

    Rank 0 first un-commits an existing `meta_{step}.json` (re-saving a step), then writes `model_{step}.pt` (from
    `model_state`); every rank with `optim_states` writes `optim_{step}_rank{r}.pt` (a list of optimizer state
    dicts). After a barrier rank 0 writes `meta_{step}.json` last, with `step`, `files: {name: size}` and everything
    in `meta`; only then does the step exist. Then rank 0 applies retention (keep the newest `keep_last` plus the
    best `val_bpb`; keep_last <= 0 keeps all; with `meta["run_id"]` only that lineage's steps are counted and
    pruned) and prints `Checkpoint saved: step 000500 -> <dir>`. When a write fails (e.g. ENOSPC) the files this
    save already wrote are removed and the error propagates: older steps stay valid. Returns the written meta
    (rank 0) or None.
    """
    if rank == 0:
        os.makedirs(ckpt_dir, exist_ok=True)
        _invalidate(ckpt_dir, step)
    if _dist_ready(world_size):
        dist.barrier()
    sizes = {}
    written_paths = []
    try:
        if rank == 0:
            if model_state is None:
                raise ValueError("rank 0 must pass the model state")
            path = os.path.join(ckpt_dir, model_name(step))
            written_paths.append(path)
            sizes[model_name(step)] = _write_torch_atomic(path, model_state)
        if optim_states is not None:
            path = os.path.join(ckpt_dir, optim_name(step, rank))
            written_paths.append(path)
            sizes[optim_name(step, rank)] = _write_torch_atomic(path, list(optim_states))
        if _dist_ready(world_size):
            gathered = [None] * world_size
            dist.all_gather_object(gathered, sizes)  # also serves as the barrier before the meta
            for part in gathered:
                sizes.update(part)
        written = None
        if rank == 0:
            written = dict(meta)
            written["format"] = META_FORMAT
            written["step"] = step
            written["world_size"] = world_size
            written["saved_at"] = time.time()
            written["files"] = dict(sorted(sizes.items()))
            _write_json_atomic(os.path.join(ckpt_dir, meta_name(step)), written)
    except BaseException:
        for path in written_paths:  # uncommitted (no meta): remove what this save wrote, keep older steps valid
            try:
                os.unlink(path)
            except OSError:
                pass
        raise
    if rank == 0:
        apply_retention(ckpt_dir, keep_last, protect=(step,), run_id=meta.get("run_id"))
        if not quiet:
            print(f"Checkpoint saved: step {step:06d} -> {ckpt_dir}", flush=True)
    if _dist_ready(world_size):
        dist.barrier()
    return written


def update_meta(ckpt_dir: str, step: int, updates: dict) -> dict:
    """Atomically merge `updates` into a committed step's meta (e.g. the val_bpb measured after saving)."""
    meta = validate_step(ckpt_dir, step)
    meta.update(updates)
    _write_json_atomic(os.path.join(ckpt_dir, meta_name(step)), meta)
    return meta


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove(path: str):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def apply_retention(ckpt_dir: str, keep_last: int = 3, protect=(), run_id=None) -> list:
    """Delete valid steps beyond the newest `keep_last` (the best val_bpb and `protect` stay), uncommitted files of
    steps older than the newest valid one, and temporary files of dead writers. Invalid committed steps are left
    for inspection. With `run_id` only steps whose meta records that run id are counted and deleted: nothing of
    another run (or a meta without run id) is ever touched. Returns the deleted step numbers."""
    valid = list_valid_steps(ckpt_dir)
    if run_id is not None:
        valid = [s for s in valid if step_run_id(ckpt_dir, s) == run_id]
    deleted = []
    if keep_last is not None and keep_last > 0 and len(valid) > keep_last:
        keep = set(valid[-keep_last:]) | set(protect)
        scored = []
        for step in valid:
            try:
                bpb = read_meta(ckpt_dir, step).get("val_bpb")
            except CheckpointError:
                continue
            if isinstance(bpb, (int, float)):
                scored.append((bpb, step))
        if scored:
            keep.add(min(scored)[1])
        for step in valid:
            if step in keep:
                continue
            _remove(os.path.join(ckpt_dir, meta_name(step)))  # un-commit first
            _fsync_dir(ckpt_dir)
            deleted.append(step)
    newest_valid = valid[-1] if valid else None
    gone = set(deleted)
    committed = set(_steps_with_meta(ckpt_dir))
    for name in os.listdir(ckpt_dir):
        m = _STEP_FILE.match(name)
        if m and m.group(1) != "meta":
            step = int(m.group(2))
            if step in gone or (newest_valid is not None and step < newest_valid and step not in committed):
                _remove(os.path.join(ckpt_dir, name))
            continue
        t = _TMP_FILE.match(name)
        if t and not _pid_alive(int(t.group(2))):
            _remove(os.path.join(ckpt_dir, name))
    return deleted


# ---------------------------------------------------------------------------------------------------------------------
# loading

def _torch_load(path: str, device):
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{os.path.basename(path)} is missing")
    except Exception as exc:  # corrupted file, or something that is not plain tensors/containers
        raise CheckpointError(f"{os.path.basename(path)} cannot be loaded safely ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:200]})")


def load_checkpoint(ckpt_dir, step, device, rank=0, load_optim=True):
    """(model_state, optim_states | None, meta) of a valid step; CheckpointError if the step is not valid.

    Everything is read with torch.load(weights_only=True). The optimizer file is this rank's.
    """
    meta = validate_step(ckpt_dir, step)
    model_state = _torch_load(os.path.join(ckpt_dir, model_name(step)), device)
    optim_states = None
    if load_optim:
        optim_states = _torch_load(os.path.join(ckpt_dir, optim_name(step, rank)), device)
    return model_state, optim_states, meta


def resolve_resume_step(ckpt_dir: str, requested):
    """The step to resume from for `--resume_from_step`: None (fresh start) or a valid step number.

    `latest` picks the newest valid step (None when there is none yet); a number must be a valid step, otherwise
    UsageError naming the valid ones. Lineage-blind: training stages use `plan_resume`, which honours run ids.
    """
    if requested is None or requested == "" or str(requested) == "-1":
        return None
    if str(requested) == "latest":
        return find_latest_step(ckpt_dir)
    return _named_valid_step(ckpt_dir, requested)


def _named_valid_step(ckpt_dir: str, requested) -> int:
    """`--resume_from_step=S` as a committed, valid step of ckpt_dir, else UsageError naming the valid ones."""
    try:
        step = int(requested)
    except ValueError:
        raise UsageError(f"--resume_from_step must be a step number or 'latest', got {requested!r}")
    if step < 0:
        raise UsageError(f"--resume_from_step must be a step number >= 0 or 'latest', got {requested!r}")
    try:
        validate_step(ckpt_dir, step)
    except CheckpointError as exc:
        valid = list_valid_steps(ckpt_dir)
        choices = ", ".join(str(s) for s in valid) if valid else "none"
        raise UsageError(f"cannot resume from step {step} in {ckpt_dir}: {exc}; valid steps: {choices}")
    return step


def find_largest_model(stage_root: str) -> str:
    """The model tag to use when none is given: the deepest `d<N>` directory, else the most recently modified."""
    try:  # directories of checkpoints moved aside (`<tag>.run-<id>`) are only used when named
        tags = [t for t in os.listdir(stage_root) if os.path.isdir(os.path.join(stage_root, t))
                and not _ASIDE.search(t)]
    except OSError:
        tags = []
    if not tags:
        raise UsageError(f"no checkpoints in {stage_root}; {_train_hint(stage_root)}")
    depth_tags = [(int(m.group(1)), t) for t in tags if (m := re.fullmatch(r"d(\d+)", t))]
    if depth_tags:
        return max(depth_tags)[1]
    return max(tags, key=lambda t: os.path.getmtime(os.path.join(stage_root, t)))


def _model_config(meta: dict, ckpt_dir: str):
    """The GPTConfig a checkpoint's meta describes; UsageError (one line) for a model this nanochat does not build,
    such as upstream nanochat's 2026 architecture (`window_pattern`, vocab 32,768 and value embeddings)."""
    from dataclasses import fields
    from nanochat.gpt import GPTConfig
    given = meta.get("model_config")
    if not isinstance(given, dict):
        raise UsageError(f"checkpoint {ckpt_dir} has no model_config in its meta; it was not written by nanochat")
    foreign = sorted(set(given) - {f.name for f in fields(GPTConfig)})
    if foreign:
        raise UsageError(f"checkpoint {ckpt_dir} is a model this nanochat does not build (model_config has "
                         f"{', '.join(foreign)}: upstream nanochat's 2026 architecture?); use that code's own "
                         f"chat_cli/chat_web for it")
    try:
        return GPTConfig(**given)
    except TypeError as exc:
        raise UsageError(f"checkpoint {ckpt_dir} has an unusable model_config ({exc})") from None


def load_model(stage, device, phase="eval", model_tag=None, step=None, run_id=None,
               purpose_flags=("--run_id", "--step")):
    """(model, tokenizer, meta): build the GPT of a stage's checkpoint (`step`, else the newest valid step of
    lineage `run_id`, else — run_id None — the newest valid step of any run).

    phase "eval" puts the model in eval mode, "train" in train mode. UsageError when nothing usable exists; when
    only other runs' checkpoints exist it names them and `purpose_flags` (the caller's run-id and step flags) to
    load one on purpose.
    """
    from nanochat.gpt import GPT
    from nanochat.tokenizer import get_tokenizer

    if phase not in ("eval", "train"):
        raise ValueError(f"phase must be 'eval' or 'train', got {phase!r}")
    root = os.path.join(get_base_dir(), STAGE_DIRS[stage])
    tag = check_model_tag(model_tag) if model_tag is not None else find_largest_model(root)
    ckpt_dir = os.path.join(root, tag)
    if step is None:
        step = latest_step_of_run(ckpt_dir, run_id)
        if step is None and run_id is not None and (other := find_latest_step(ckpt_dir)) is not None:
            owner = step_run_id(ckpt_dir, other)
            run_flag, step_flag = purpose_flags
            how = f"{run_flag}={owner} or {step_flag}={other}" if owner else f"{step_flag}={other}"
            raise UsageError(f"no {stage} checkpoint of run {run_id} in {ckpt_dir}; it holds "
                             f"{'run ' + owner if owner else 'checkpoints without run id'} (newest: step {other}); "
                             f"to use that one on purpose pass {how}")
        if step is None:
            tags = sorted(t for t in os.listdir(root) if os.path.isdir(os.path.join(root, t))) \
                if os.path.isdir(root) else []
            known = f"model tags there: {', '.join(tags)}" if tags else _train_hint(root)
            raise UsageError(f"no valid checkpoint in {ckpt_dir}; {known}")
    try:
        model_state, _, meta = load_checkpoint(ckpt_dir, step, device, load_optim=False)
    except CheckpointError as exc:
        valid = ", ".join(str(s) for s in list_valid_steps(ckpt_dir)) or "none"
        raise UsageError(f"cannot load step {step} from {ckpt_dir}: {exc}; valid steps: {valid}")
    tokenizer = get_tokenizer()
    config = _model_config(meta, ckpt_dir)
    if config.vocab_size != tokenizer.get_vocab_size():
        raise UsageError(f"checkpoint {ckpt_dir} has vocab {config.vocab_size} but the tokenizer has "
                         f"{tokenizer.get_vocab_size()}; use the tokenizer it was trained with")
    # torch.compile prefixes parameter names with `_orig_mod.`; accept such upstream checkpoints too
    model_state = {k.removeprefix("_orig_mod."): v for k, v in model_state.items()}
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()  # fills the non-persistent rotary buffers
    try:
        model.load_state_dict(model_state, strict=True, assign=True)
    except RuntimeError as exc:   # names or shapes of another architecture: one line, not a traceback
        first = str(exc).strip().splitlines()
        raise UsageError(f"checkpoint {ckpt_dir} step {step} does not fit the model its meta describes "
                         f"({first[1].strip() if len(first) > 1 else first[0]}); it was written by other code "
                         f"than this nanochat") from None
    model.train(phase == "train")
    return model, tokenizer, meta
