"""Checkpoint files on disk: upstream's names, the meta as commit marker, validation and discovery of steps."""
import json
import os
import re
import sys

from nanochat.common import UsageError, get_base_dir

META_FORMAT = "nanotui-checkpoint-1"
STAGE_DIRS = {"base": "base_checkpoints", "mid": "mid_checkpoints", "sft": "chatsft_checkpoints",
              "chatsft": "chatsft_checkpoints", "rl": "chatrl_checkpoints"}
_TMP_MARK = ".tmp."
_STEP_FILE = re.compile(r"^(model|meta|optim)_(\d{6,})(?:_rank(\d+))?\.(pt|json)$")
_TMP_FILE = re.compile(r"^\.(.+)" + re.escape(_TMP_MARK) + r"(\d+)$")
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


def _fsync_dir(directory: str):
    """Make a rename or a new file in `directory` durable (best effort: some filesystems refuse it)."""
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


def _newest_valid(ckpt_dir: str, steps) -> int:
    """Newest of `steps` that validates (newer invalid ones get the `skipping checkpoint step` line), or None."""
    for step in sorted(steps, reverse=True):
        try:
            validate_step(ckpt_dir, step)
            return step
        except CheckpointError as exc:
            print(f"skipping checkpoint step {step} in {ckpt_dir}: {exc}", file=sys.stderr, flush=True)
    return None


# ---------------------------------------------------------------------------------------------------------------------
# resuming and loading: which step

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
