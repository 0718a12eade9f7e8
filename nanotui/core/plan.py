"""Pipeline plans: profiles (4090, 8xh100, cpu-demo) + overrides -> stages with argv; which stages are done."""
from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Union

from . import ckpts
from .argvflags import drop_flag, flag_value, norm_flag, set_flag
from .runstate import STAGE_NAMES, TRAIN_STAGES

__all__ = [
    "PlanError", "Stage", "Plan", "PROFILES", "PROFILE_NAMES", "OVERRIDE_KEYS", "STAGE_NAMES",
    "build_plan", "collect_overrides", "argv_with", "stages_done", "first_pending", "plan_for_command",
    "flag_value", "describe", "set_stage_flag",
]


class PlanError(ValueError):
    """Bad profile or override; str(err) is one line telling the user what to do."""


# env-style key -> CLI flag of the same meaning
OVERRIDE_KEYS = {
    "DEVICE_BS": "--device-bs", "SEQ_LEN": "--seq-len", "NPROC_PER_NODE": "--nproc-per-node",
    "WANDB_RUN": "--wandb-run", "SFT_BS": "--sft-bs",
}
_INT_KEYS = ("DEVICE_BS", "SEQ_LEN", "NPROC_PER_NODE", "SFT_BS")
_AUTO_KEYS = ("DEVICE_BS", "SFT_BS")   # may be "auto": the stage probes the device (nanochat/batch_probe.py)
AUTO = "auto"
_TRAIN_SUBDIR = {name: fam for name, (fam, _) in TRAIN_STAGES.items()}
_LOG_KIND = {name: kind for name, (_, kind) in TRAIN_STAGES.items()}
_UPSTREAM_DEFAULT_TOTAL_BATCH = 524288
# report sections (upstream slugs) that prove a stage finished
_REPORT_FILE = {
    "tok_train": "tokenizer-training.md", "tok_eval": "tokenizer-evaluation.md",
    "base_train": "base-model-training.md", "base_eval": "base-model-evaluation.md",
    "mid_train": "midtraining.md", "chat_eval_mid": "chat-evaluation-mid.md", "chat_sft": "chat-sft.md",
    "chat_eval_sft": "chat-evaluation-sft.md", "report": "report.md",
}


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline. `to_dict()` is the run.json form (CONTRACTS "Profiles -> stages")."""
    name: str
    argv: tuple
    env: dict = field(default_factory=dict)
    trains: bool = False
    ckpt_subdir: Optional[str] = None      # relative to the base dir, e.g. "base_checkpoints/d20"
    total_batch_size: Optional[int] = None  # tokens per optimiser step (None: unknown / examples for SFT)
    device_bs: Optional[int] = None
    seq_len: Optional[int] = None
    world_size: int = 1
    num_iterations: Optional[int] = None    # None when the stage computes it (e.g. Chinchilla ratio)
    model_tag: Optional[str] = None
    log_kind: Optional[str] = None          # "base" | "mid" | "sft" for LogParser(kind=...)

    def to_dict(self) -> dict:
        return {"name": self.name, "argv": list(self.argv), "env": dict(self.env), "trains": self.trains,
                "ckpt_subdir": self.ckpt_subdir, "total_batch_size": self.total_batch_size,
                "device_bs": self.device_bs, "seq_len": self.seq_len, "world_size": self.world_size,
                "num_iterations": self.num_iterations, "model_tag": self.model_tag, "log_kind": self.log_kind}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Stage":
        return cls(name=d["name"], argv=tuple(d["argv"]), env=dict(d.get("env") or {}),
                   trains=bool(d.get("trains")), ckpt_subdir=d.get("ckpt_subdir"),
                   total_batch_size=d.get("total_batch_size"), device_bs=d.get("device_bs"),
                   seq_len=d.get("seq_len"), world_size=int(d.get("world_size") or 1),
                   num_iterations=d.get("num_iterations"), model_tag=d.get("model_tag"),
                   log_kind=d.get("log_kind"))


@dataclass(frozen=True)
class Plan:
    profile: str
    stages: tuple
    overrides: dict = field(default_factory=dict)   # validated, typed (ints for *_BS, SEQ_LEN, NPROC_PER_NODE)

    def to_dict(self) -> dict:
        return {"profile": self.profile, "overrides": dict(self.overrides),
                "stages": [s.to_dict() for s in self.stages]}

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def names(self) -> list:
        return [s.name for s in self.stages]


# ------------------------------------------------------------------ profiles
# Each stage: (name, module, args, launcher) where launcher "torchrun" stages go through torchrun when
# NPROC_PER_NODE > 1. "{RUN}" is replaced by WANDB_RUN; device batch / seq len flags are set from overrides.
# The single-node GPU pipeline (upstream's speedrun.sh): the 4090 and 8xh100 profiles differ only in their knobs.
_SPEEDRUN_STAGES = [
    ("data", "nanochat.dataset", ["--identity", "-n", "240"], "python"),  # + upstream's identity conversations
    ("tok_train", "nanochat.scripts.tok_train", ["--max_chars=2000000000"], "python"),
    ("tok_eval", "nanochat.scripts.tok_eval", [], "python"),
    ("base_train", "nanochat.scripts.base_train",
     ["--depth=20", "--device_batch_size={DEVICE_BS}", "--max_seq_len={SEQ_LEN}", "--run={RUN}"], "torchrun"),
    ("base_eval", "nanochat.scripts.base_eval", [], "torchrun"),
    ("mid_train", "nanochat.scripts.mid_train",
     ["--device_batch_size={DEVICE_BS}", "--max_seq_len={SEQ_LEN}", "--run={RUN}"], "torchrun"),
    ("chat_eval_mid", "nanochat.scripts.chat_eval", ["-i", "mid"], "torchrun"),
    ("chat_sft", "nanochat.scripts.chat_sft", ["--device_batch_size={SFT_BS}", "--run={RUN}"], "torchrun"),
    ("chat_eval_sft", "nanochat.scripts.chat_eval", ["-i", "sft"], "torchrun"),
    ("report", "nanochat.report", ["generate"], "python"),
]

PROFILES = {
    "cpu-demo": {
        "description": "tiny offline pipeline for a laptop CPU (minutes)",
        "defaults": {"DEVICE_BS": 8, "SEQ_LEN": 256, "NPROC_PER_NODE": 1, "WANDB_RUN": "dummy", "SFT_BS": 4},
        "model_tag": "demo", "total_batch_size": {"base_train": 8192, "mid_train": 8192},
        "num_iterations": {"base_train": 200, "mid_train": 100, "chat_sft": 100},
        "stages": [
            ("data", "nanochat.dataset", ["--demo"], "python"),
            ("tok_train", "nanochat.scripts.tok_train", ["--vocab_size=4096", "--max_chars=20000000"], "python"),
            ("base_train", "nanochat.scripts.base_train",
             ["--depth=2", "--max_seq_len={SEQ_LEN}", "--device_batch_size={DEVICE_BS}", "--total_batch_size=8192",
              "--num_iterations=200", "--eval_every=50", "--eval_tokens=65536", "--core_metric_every=-1",
              "--sample_every=100", "--save_every=25", "--model_tag=demo", "--run={RUN}"], "torchrun"),
            ("base_eval", "nanochat.scripts.base_eval", ["--model_tag=demo", "--demo"], "torchrun"),
            ("mid_train", "nanochat.scripts.mid_train",
             ["--model_tag=demo", "--device_batch_size={DEVICE_BS}", "--max_seq_len={SEQ_LEN}",
              "--total_batch_size=8192", "--num_iterations=100", "--save_every=25", "--demo", "--run={RUN}"],
             "torchrun"),
            ("chat_eval_mid", "nanochat.scripts.chat_eval", ["-i", "mid", "--model_tag=demo", "--demo"], "torchrun"),
            ("chat_sft", "nanochat.scripts.chat_sft",
             ["--model_tag=demo", "--device_batch_size={SFT_BS}", "--num_iterations=100", "--save_every=25",
              "--demo", "--run={RUN}"], "torchrun"),
            ("chat_eval_sft", "nanochat.scripts.chat_eval", ["-i", "sft", "--model_tag=demo", "--demo"], "torchrun"),
            ("report", "nanochat.report", ["generate"], "python"),
        ],
    },
    "4090": {
        "description": "one RTX 4090 (24 GiB): d20, DEVICE_BS=4, SEQ_LEN=1024, SFT batch 2",
        "defaults": {"DEVICE_BS": 4, "SEQ_LEN": 1024, "NPROC_PER_NODE": 1, "WANDB_RUN": "dummy", "SFT_BS": 2},
        "model_tag": "d20",
        "total_batch_size": {"base_train": _UPSTREAM_DEFAULT_TOTAL_BATCH, "mid_train": _UPSTREAM_DEFAULT_TOTAL_BATCH},
        "num_iterations": {},
        "stages": _SPEEDRUN_STAGES,
    },
    "8xh100": {
        "description": "upstream speedrun on 8 x H100: d20, torchrun x8, DEVICE_BS=32, SEQ_LEN=2048",
        "defaults": {"DEVICE_BS": 32, "SEQ_LEN": 2048, "NPROC_PER_NODE": 8, "WANDB_RUN": "dummy", "SFT_BS": 4},
        "model_tag": "d20",
        "total_batch_size": {"base_train": _UPSTREAM_DEFAULT_TOTAL_BATCH, "mid_train": _UPSTREAM_DEFAULT_TOTAL_BATCH},
        "num_iterations": {},
        "stages": _SPEEDRUN_STAGES,
    },
}
PROFILE_NAMES = tuple(PROFILES)


def _validate_overrides(overrides: Mapping) -> dict:
    out = {}
    for key, value in overrides.items():
        if key not in OVERRIDE_KEYS:
            raise PlanError(f"unknown override {key!r}; known: {', '.join(OVERRIDE_KEYS)}")
        if value is None or (isinstance(value, str) and value.strip() == ""):
            continue
        if key in _AUTO_KEYS and str(value).strip().lower() == AUTO:
            out[key] = AUTO
        elif key in _INT_KEYS:
            text = str(value).strip()
            if isinstance(value, bool) or not re.fullmatch(r"[0-9]+", text) or int(text) <= 0:
                also = " (or auto: measure it)" if key in _AUTO_KEYS else ""
                raise PlanError(f"{key} must be a positive integer, got {str(value)!r}{also}")
            out[key] = int(text)
        else:
            text = str(value).strip()
            if any(ch.isspace() for ch in text):
                raise PlanError(f"{key} must not contain spaces, got {text!r}")
            out[key] = text
    return out


def collect_overrides(env: Optional[Mapping] = None, flags: Optional[Mapping] = None) -> dict:
    """Merge overrides from an environment mapping (only the known keys are read) and CLI flags of the same
    meaning (keys like "DEVICE_BS", "device_bs", "--device-bs"); flags win. Values are NOT validated here."""
    merged = {}
    for key in OVERRIDE_KEYS:
        if env is not None and env.get(key) not in (None, ""):
            merged[key] = env[key]
    by_flag = {v: k for k, v in OVERRIDE_KEYS.items()}
    for name, value in (flags or {}).items():
        if value is None:
            continue
        key = by_flag.get(name) or name.lstrip("-").upper().replace("-", "_")
        merged[key] = value
    return merged


def _launcher(python: str, module: str, launcher: str, nproc: int) -> list:
    if launcher == "torchrun" and nproc > 1:
        # `python -m torch.distributed.run` is torchrun with the same interpreter (no PATH lookup); the `--`
        # keeps torchrun from reading the script's flags as its own (`--run=` would match `--run-path`)
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", module, "--"]
    return [python, "-m", module]


def build_plan(profile: str, overrides: Optional[Mapping] = None, python: str = "python") -> Plan:
    """The stages of `profile` with overrides applied (DEVICE_BS, SEQ_LEN, NPROC_PER_NODE, WANDB_RUN, SFT_BS).

    Raises PlanError (one line) for an unknown profile, a malformed value, or a device batch x seq len x
    world size that does not divide a stage's total batch size."""
    if profile not in PROFILES:
        raise PlanError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILE_NAMES)}")
    spec = PROFILES[profile]
    given = _validate_overrides(overrides or {})
    values = dict(spec["defaults"])
    values.update(given)
    if given.get("DEVICE_BS") == AUTO and "SFT_BS" not in given:
        values["SFT_BS"] = AUTO   # DEVICE_BS=auto probes every training stage unless SFT_BS is given
    nproc = values["NPROC_PER_NODE"]
    stages = []
    for name, module, args, launcher in spec["stages"]:
        argv = _launcher(python, module, launcher, nproc)
        argv += [a.replace("{DEVICE_BS}", str(values["DEVICE_BS"])).replace("{SEQ_LEN}", str(values["SEQ_LEN"]))
                 .replace("{SFT_BS}", str(values["SFT_BS"])).replace("{RUN}", values["WANDB_RUN"]) for a in args]
        world = nproc if launcher == "torchrun" else 1
        trains = name in _TRAIN_SUBDIR
        device_bs = values["SFT_BS"] if name == "chat_sft" else values["DEVICE_BS"] if trains else None
        if device_bs == AUTO:
            device_bs = None   # chosen by the stage's probe; argv carries --device_batch_size=auto
        seq_len = values["SEQ_LEN"] if name in ("base_train", "mid_train") else None
        total = spec["total_batch_size"].get(name)
        if total is not None and device_bs is not None and total % (device_bs * seq_len * world):
            raise PlanError(
                f"{name}: DEVICE_BS={device_bs} x SEQ_LEN={seq_len} x NPROC_PER_NODE={world} = "
                f"{device_bs * seq_len * world} tokens does not divide the total batch size {total}; "
                f"use powers of two")
        stages.append(Stage(
            name=name, argv=tuple(argv), env={}, trains=trains,
            ckpt_subdir=f"{_TRAIN_SUBDIR[name]}_checkpoints/{spec['model_tag']}" if trains else None,
            total_batch_size=total, device_bs=device_bs, seq_len=seq_len, world_size=world,
            num_iterations=spec["num_iterations"].get(name), model_tag=spec["model_tag"] if trains else None,
            log_kind=_LOG_KIND.get(name)))
    return Plan(profile=profile, stages=tuple(stages), overrides=given)


# ------------------------------------------------------------------ argv rewriting
def argv_with(stage: Union[Stage, Mapping], device_bs: Optional[int] = None,
              resume: Union[int, str, None] = None) -> list:
    """The stage argv with `--device_batch_size=B` set (replaced in place, else appended) and
    `--resume_from_step=S|latest` added (any earlier resume flag removed)."""
    argv = list(stage.argv if isinstance(stage, Stage) else stage["argv"])
    if device_bs is not None:
        if isinstance(device_bs, bool) or int(device_bs) <= 0:
            raise PlanError(f"device batch size must be a positive integer, got {device_bs!r}")
        argv = set_flag(argv, "device_batch_size", int(device_bs))
    if resume is not None:
        if not (resume == "latest" or (isinstance(resume, int) and not isinstance(resume, bool) and resume >= 0)):
            raise PlanError(f"resume must be a step >= 0 or 'latest', got {resume!r}")
        argv = drop_flag(argv, "resume_from_step")
        argv.append(f"--resume_from_step={resume}")
    return argv


# ------------------------------------------------------------------ `--set STAGE:--flag=value`
# flags whose value the supervisor also keeps as a plan field (it rewrites argv from the field on every attempt,
# and the OOM ladder works from the fields): setting the flag sets the field, checked like the profile's values
_FIELD_OF_FLAG = {"device_batch_size": "device_bs", "max_seq_len": "seq_len", "total_batch_size": "total_batch_size",
                  "num_iterations": "num_iterations"}
_REFUSED_FLAGS = {"resume_from_step": "the supervisor chooses the resume point; use `nanotui resume --step S`"}
# the seed's setting names (nanochat/flag_aliases.py gives the stages the same table)
SEED_ALIASES = {"ckpt_every": "save_every", "resume_step": "resume_from_step", "resume_tag": "model_tag"}


def set_stage_flag(stage: Mapping, flag: str, value: str) -> dict:
    """A run.json stage with `--flag=value` set in its argv and, for the flags the supervisor owns as fields
    (device batch, seq len, total batch, iterations, model tag), in those fields too. Raises PlanError (one line)
    for a value the stage cannot take (not a positive integer, a batch that does not divide the total batch)."""
    name = norm_flag(flag)
    out = dict(stage)
    if name in SEED_ALIASES:   # resume_step=-1 / resume_tag="" are what the supervisor does anyway: no change
        if (name, str(value).strip()) in (("resume_step", "-1"), ("resume_tag", "")):
            return out
        name = SEED_ALIASES[name]
    if name in _REFUSED_FLAGS:
        raise PlanError(f"--set {stage['name']}:--{name}: {_REFUSED_FLAGS[name]}")
    field_name = _FIELD_OF_FLAG.get(name)
    if field_name is not None:
        text = str(value).strip()
        if name == "num_iterations" and re.fullmatch(r"-1", text):
            out["num_iterations"] = None  # the stage computes it
        elif not re.fullmatch(r"[0-9]+", text) or int(text) <= 0:
            raise PlanError(f"--set {stage['name']}:--{name} must be a positive integer, got {value!r}")
        else:
            out[field_name] = int(text)
        if out.get("trains") and out.get("total_batch_size") and out.get("device_bs"):
            per = out["device_bs"] * (out.get("seq_len") or 1) * int(out.get("world_size") or 1)
            if out["total_batch_size"] % per:
                raise PlanError(
                    f"--set {stage['name']}:--{name}={value}: device batch {out['device_bs']} x seq len "
                    f"{out.get('seq_len') or 1} x {out.get('world_size') or 1} rank(s) = {per} tokens does not "
                    f"divide the total batch size {out['total_batch_size']}; use powers of two")
    if name == "model_tag" and out.get("trains"):
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(value)):
            raise PlanError(f"--set {stage['name']}:--model_tag must be a plain name, got {value!r}")
        out["model_tag"] = str(value)
        if out.get("ckpt_subdir"):
            out["ckpt_subdir"] = out["ckpt_subdir"].rsplit("/", 1)[0] + "/" + str(value)
    out["argv"] = set_flag(list(stage["argv"]), name, value)
    return out


# ------------------------------------------------------------------ what is done already
def _isfile(*parts) -> bool:
    return os.path.isfile(os.path.join(*parts))


def _stage_done(stage: Stage, base_dir: str) -> bool:
    name = stage.name
    report_dir = os.path.join(base_dir, "report")
    if name == "data":
        data_dir = os.path.join(base_dir, "base_data")
        try:
            shards = [n for n in os.listdir(data_dir) if n.startswith("shard_") and n.endswith(".parquet")]
        except OSError:
            return False
        has_val = "shard_01822.parquet" in shards        # the pinned validation shard (nanochat/dataset.py)
        train = len(shards) - int(has_val)
        argv = list(stage.argv)
        n = argv[argv.index("-n") + 1] if "-n" in argv[:-1] else flag_value(argv, "num_files")
        if n is not None and n.isdigit():
            return has_val and train >= int(n)
        return has_val and train >= 1
    if name == "tok_train":
        tok = os.path.join(base_dir, "tokenizer")
        return _isfile(tok, "tokenizer.json") or _isfile(tok, "tokenizer.pkl")
    if stage.trains and stage.ckpt_subdir:
        if name in _REPORT_FILE and _isfile(report_dir, _REPORT_FILE[name]):
            return True
        if stage.num_iterations is None:
            return False
        infos = ckpts.scan_dir(os.path.join(base_dir, stage.ckpt_subdir))
        return any(c.status != "invalid" and c.step >= stage.num_iterations for c in infos)
    if name in _REPORT_FILE:
        return _isfile(report_dir, _REPORT_FILE[name])
    return False


def stages_done(plan: Plan, base_dir: str) -> list:
    """Names of the plan's stages whose results already exist under base_dir (data shards, tokenizer,
    a final-step checkpoint or the stage's report section)."""
    return [s.name for s in plan.stages if _stage_done(s, base_dir)]


def first_pending(plan: Plan, base_dir: str) -> int:
    """Index of the first stage that is not done (len(plan.stages) when all are): a resume starts there
    and runs every later stage, so results downstream of a redone stage are never stale."""
    done = set(stages_done(plan, base_dir))
    for i, s in enumerate(plan.stages):
        if s.name not in done:
            return i
    return len(plan.stages)


# ------------------------------------------------------------------ arbitrary commands
_TRAIN_MODULE_RE = re.compile(r"(?:^|\.)(base_train|mid_train|chat_sft)$")
_DEFAULT_DEVICE_BS = {"base_train": 32, "mid_train": 32, "chat_sft": 4}
_SOURCE_SUBDIR = {"mid_train": "base_checkpoints", "chat_sft": "mid_checkpoints"}


def _largest_model_tag(base_dir: Optional[str], subdir: str) -> Optional[str]:
    """The tag upstream loads by default (its largest `d<depth>` model; else the newest directory); the
    mid/SFT stage saves under the same tag."""
    if not base_dir:
        return None
    root = os.path.join(base_dir, subdir)
    try:
        tags = [t for t in os.listdir(root) if os.path.isdir(os.path.join(root, t))]
    except OSError:
        return None
    depths = [(int(t[1:]), t) for t in tags if re.fullmatch(r"d\d+", t)]
    if depths:
        return max(depths)[1]
    return max(tags, key=lambda t: os.path.getmtime(os.path.join(root, t)), default=None)


def _dialect_stage(stage: Stage, argv: list, script: str, dialect, base_dir: Optional[str]) -> Stage:
    """The command stage with totals, defaults and sources as an upstream script of `dialect` computes them:
    total batch None when the script derives it (2026 `--total-batch-size=-1`, SFT inheriting from its base
    checkpoint), device batch / seq len / depth from the script's own defaults, and SFT's source family (2026:
    base_checkpoints, no mid stage; 2025-11: `--source`, default mid)."""
    from .dialect import device_bs as dialect_bs, total_batch
    d = dialect
    seq = flag_value(argv, "max_seq_len")
    seq = int(seq) if seq and seq.isdigit() else d.defaults.get("max_seq_len")
    tag = flag_value(argv, "model_tag") or None
    depth = flag_value(argv, "depth") or d.defaults.get("depth")
    if script == "chat_sft":
        source = flag_value(argv, "source") or d.defaults.get("source") or "base"
        src_sub = f"{source}_checkpoints" if source in ("base", "mid") else "base_checkpoints"
        tag = tag or _largest_model_tag(base_dir, src_sub)
    elif tag is None and str(depth or "").isdigit():
        tag = f"d{depth}"
    elif tag is None and script == "mid_train":
        tag = _largest_model_tag(base_dir, "base_checkpoints")
    subdir = _TRAIN_SUBDIR[script]
    return Stage(name=stage.name, argv=stage.argv, trains=True,
                 ckpt_subdir=f"{subdir}_checkpoints/{tag}" if tag else None,
                 total_batch_size=total_batch(argv, d), device_bs=dialect_bs(argv, d),
                 seq_len=seq if isinstance(seq, int) and not isinstance(seq, bool) and seq > 0 else None,
                 world_size=stage.world_size, num_iterations=stage.num_iterations, model_tag=tag,
                 log_kind=_LOG_KIND[script])


def plan_for_command(argv: Sequence[str], base_dir: Optional[str] = None, dialect=None) -> Plan:
    """A one-stage plan ("command") for `nanotui run -- CMD`. A nanochat base_train/mid_train/chat_sft
    invocation (python -m or torchrun, ours or upstream's `scripts.*`) is marked trains=True with its device
    batch, sequence length and checkpoint dir so OOM fallback and resume work (without --model_tag/--depth the
    tag is upstream's default: d20 for base, the largest source model under base_dir for mid/SFT); anything
    else (speedrun.sh included) is supervised and parsed but not restarted at another batch size.
    `dialect` (core.dialect.Dialect of an upstream script): totals, defaults and SFT's source follow it."""
    argv = [str(a) for a in argv]
    if not argv:
        raise PlanError("nothing to run: give a command after `--`, e.g. nanotui run -- bash speedrun.sh")
    module = None
    for i, a in enumerate(argv[:-1]):
        if a == "-m" and _TRAIN_MODULE_RE.search(argv[i + 1]):
            module = argv[i + 1]
    if module is None:
        for a in argv:
            base = os.path.basename(a)
            if base.endswith(".py") and _TRAIN_MODULE_RE.search(base[:-3]):
                module = base[:-3]
    world = 1
    nproc = flag_value(argv, "nproc_per_node")
    if nproc and nproc.isdigit():
        world = int(nproc)
    if module is None:
        return Plan(profile="command", stages=(Stage(name="command", argv=tuple(argv)),))
    script = _TRAIN_MODULE_RE.search(module).group(1)
    bs = flag_value(argv, "device_batch_size")
    seq = flag_value(argv, "max_seq_len")
    total = flag_value(argv, "total_batch_size")
    iters = flag_value(argv, "num_iterations")
    tag = flag_value(argv, "model_tag")
    depth = flag_value(argv, "depth")
    if tag is None and depth and depth.isdigit():
        tag = f"d{depth}"
    if tag is None:
        tag = "d20" if script == "base_train" else _largest_model_tag(base_dir, _SOURCE_SUBDIR[script])
    subdir = _TRAIN_SUBDIR[script]
    stage = Stage(
        name="command", argv=tuple(argv), trains=True,
        ckpt_subdir=f"{subdir}_checkpoints/{tag}" if tag else None,
        total_batch_size=int(total) if total and total.isdigit() else (
            _UPSTREAM_DEFAULT_TOTAL_BATCH if script != "chat_sft" else None),
        device_bs=int(bs) if bs and bs.isdigit() else _DEFAULT_DEVICE_BS[script],
        seq_len=int(seq) if seq and seq.isdigit() else (2048 if script != "chat_sft" else None),
        world_size=world, num_iterations=int(iters) if iters and iters.lstrip("-").isdigit() and int(iters) > 0 else None,
        model_tag=tag, log_kind=_LOG_KIND[script])
    if dialect is not None and dialect.version != "ours":
        stage = _dialect_stage(stage, argv, script, dialect, base_dir)
    return Plan(profile="command", stages=(stage,))


def describe(stage: Stage) -> str:
    """The stage's command line as a shell would show it."""
    return shlex.join(stage.argv)
