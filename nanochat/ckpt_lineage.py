"""Run lineage of checkpoints: which run wrote a step, where a training stage resumes, other runs' steps set aside."""
import os
import re
import secrets
import time
from dataclasses import dataclass, field

from nanochat.ckpt_files import (_STEP_FILE, CheckpointError, _fsync_dir, _named_valid_step, _newest_valid,
                                 _steps_with_meta, find_latest_step, read_meta)
from nanochat.common import UsageError

RUN_ID_ENV = "NANOCHAT_RUN_ID"   # the lineage id (the supervisor sets it to its run id for every stage)
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


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
