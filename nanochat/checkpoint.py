"""Checkpoints: atomic upstream-named files, meta JSON as the commit marker, validation, discovery, retention, safe load."""
import json
import os
import re
import sys
import time

import torch
import torch.distributed as dist

from nanochat.common import UsageError, get_base_dir

META_FORMAT = "nanotui-checkpoint-1"
STAGE_DIRS = {"base": "base_checkpoints", "mid": "mid_checkpoints", "sft": "chatsft_checkpoints",
              "chatsft": "chatsft_checkpoints", "rl": "chatrl_checkpoints"}
_TMP_MARK = ".tmp."
_STEP_FILE = re.compile(r"^(model|meta|optim)_(\d{6,})(?:_rank(\d+))?\.(pt|json)$")
_TMP_FILE = re.compile(r"^\.(.+)" + re.escape(_TMP_MARK) + r"(\d+)$")


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
    for step in reversed(_steps_with_meta(ckpt_dir)):
        try:
            validate_step(ckpt_dir, step)
            return step
        except CheckpointError as exc:
            print(f"skipping checkpoint step {step} in {ckpt_dir}: {exc}", file=sys.stderr, flush=True)
    return None


# ---------------------------------------------------------------------------------------------------------------------
# saving

def _dist_ready(world_size: int) -> bool:
    return world_size > 1 and dist.is_available() and dist.is_initialized()


def save_checkpoint(ckpt_dir, step, model_state, optim_states, meta, rank=0, world_size=1, keep_last=3,
                    quiet=False):
    """Commit checkpoint `step` in `ckpt_dir`; every rank calls it (collective under DDP).

    Rank 0 writes `model_{step}.pt` (from `model_state`); every rank with `optim_states` writes
    `optim_{step}_rank{r}.pt` (a list of optimizer state dicts). After a barrier rank 0 writes `meta_{step}.json`
    last, with `step`, `files: {name: size}` and everything in `meta`; only then does the step exist. Then rank 0
    applies retention (keep the newest `keep_last` plus the best `val_bpb`; keep_last <= 0 keeps all) and prints
    `Checkpoint saved: step 000500 -> <dir>`. Returns the meta that was written (rank 0) or None.
    """
    if rank == 0:
        os.makedirs(ckpt_dir, exist_ok=True)
    if _dist_ready(world_size):
        dist.barrier()
    sizes = {}
    if rank == 0:
        if model_state is None:
            raise ValueError("rank 0 must pass the model state")
        sizes[model_name(step)] = _write_torch_atomic(os.path.join(ckpt_dir, model_name(step)), model_state)
    if optim_states is not None:
        sizes[optim_name(step, rank)] = _write_torch_atomic(os.path.join(ckpt_dir, optim_name(step, rank)),
                                                              list(optim_states))
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
        apply_retention(ckpt_dir, keep_last, protect=(step,))
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


def apply_retention(ckpt_dir: str, keep_last: int = 3, protect=()) -> list:
    """Delete valid steps beyond the newest `keep_last` (the best val_bpb and `protect` stay), uncommitted files of
    steps older than the newest valid one, and temporary files of dead writers. Invalid committed steps are left
    for inspection. Returns the deleted step numbers."""
    valid = list_valid_steps(ckpt_dir)
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
    UsageError naming the valid ones.
    """
    if requested is None or requested == "" or str(requested) == "-1":
        return None
    if str(requested) == "latest":
        return find_latest_step(ckpt_dir)
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
    try:
        tags = [t for t in os.listdir(stage_root) if os.path.isdir(os.path.join(stage_root, t))]
    except OSError:
        tags = []
    if not tags:
        raise UsageError(f"no checkpoints in {stage_root}; {_train_hint(stage_root)}")
    depth_tags = [(int(m.group(1)), t) for t in tags if (m := re.fullmatch(r"d(\d+)", t))]
    if depth_tags:
        return max(depth_tags)[1]
    return max(tags, key=lambda t: os.path.getmtime(os.path.join(stage_root, t)))


def load_model(stage, device, phase="eval", model_tag=None, step=None):
    """(model, tokenizer, meta): build the GPT of a stage's checkpoint (newest valid step unless `step`).

    phase "eval" puts the model in eval mode, "train" in train mode. UsageError when nothing usable exists.
    """
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.tokenizer import get_tokenizer

    if phase not in ("eval", "train"):
        raise ValueError(f"phase must be 'eval' or 'train', got {phase!r}")
    root = os.path.join(get_base_dir(), STAGE_DIRS[stage])
    tag = check_model_tag(model_tag) if model_tag is not None else find_largest_model(root)
    ckpt_dir = os.path.join(root, tag)
    if step is None:
        step = find_latest_step(ckpt_dir)
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
    config = GPTConfig(**meta["model_config"])
    if config.vocab_size != tokenizer.get_vocab_size():
        raise UsageError(f"checkpoint {ckpt_dir} has vocab {config.vocab_size} but the tokenizer has "
                         f"{tokenizer.get_vocab_size()}; use the tokenizer it was trained with")
    # torch.compile prefixes parameter names with `_orig_mod.`; accept such upstream checkpoints too
    model_state = {k.removeprefix("_orig_mod."): v for k, v in model_state.items()}
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()  # fills the non-persistent rotary buffers
    model.load_state_dict(model_state, strict=True, assign=True)
    model.train(phase == "train")
    return model, tokenizer, meta
