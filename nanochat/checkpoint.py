"""Checkpoints: atomic saves with the meta as commit marker, retention, safe loading; re-exports the file, lineage
and lock helpers (nanochat.ckpt_files, ckpt_lineage, ckpt_lock) under their old names."""
import errno
import json
import os
import time

import torch
import torch.distributed as dist

from nanochat.ckpt_files import (_ASIDE, _STEP_FILE, _TMP_FILE, _TMP_MARK, META_FORMAT, STAGE_DIRS,  # noqa: F401
                                 CheckpointError, _fsync_dir, _named_valid_step, _newest_valid, _steps_with_meta,
                                 _train_hint, check_model_tag, checkpoint_dir, find_largest_model, find_latest_step,
                                 list_valid_steps, meta_name, model_name, optim_name, read_meta, resolve_resume_step,
                                 validate_step)
from nanochat.ckpt_lineage import (RUN_ID_ENV, ResumePlan, _committed_lineages, apply_plan,  # noqa: F401
                                   check_run_id, latest_step_of_run, moved_aside_dirs, new_run_id, plan_resume,
                                   run_id_from, set_aside, step_run_id)
from nanochat.ckpt_lock import LOCK_NAME, CheckpointLock  # noqa: F401
from nanochat.common import UsageError, get_base_dir


# ---------------------------------------------------------------------------------------------------------------------
# atomic file writes

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
