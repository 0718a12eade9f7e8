"""Command-line flags every training stage shares (argparse with nanochat's spellings) and the batch math they imply."""
import argparse
import math
import sys

from nanochat import flag_aliases
from nanochat.checkpoint import check_model_tag, check_run_id
from nanochat.common import COMPILE_AUTO_MIN_STEPS, COMPILE_MODES, UsageError
from nanochat.training.dataskip import parse_data_skip
from nanochat.training.guard import DEFAULT_SPIKE_RTOL, DEFAULT_SPIKE_WARMUP, DEFAULT_SPIKE_WINDOW


class FlagParser(argparse.ArgumentParser):
    """argparse that accepts `--a_b=1`, `--a-b 1`, `--a_b 1`; unknown flags and bad values raise UsageError (one line).

    Register options with underscores (`--device_batch_size`); dashes in a flag name are mapped to underscores.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UsageError(f"{flag_aliases.did_you_mean(message, self)} (see --help)")

    @staticmethod
    def normalise(argv):
        if argv and argv[0] == "--":  # `torchrun ... -m module -- --flags` (as upstream's speedrun) passes the `--`
            argv = argv[1:]
        out = []
        for token in argv:
            if token.startswith("--") and len(token) > 2:
                name, sep, value = token[2:].partition("=")
                token = "--" + name.replace("-", "_") + sep + value
            out.append(token)
        return out

    def parse_args(self, args=None, namespace=None):
        argv = sys.argv[1:] if args is None else list(args)
        return super().parse_args(flag_aliases.apply(self.normalise(argv), self), namespace)  # seed's names


def _int_flag(min_value=None, allow=()):
    def convert(text):
        try:
            value = int(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
        if value in allow:
            return value
        if min_value is not None and value < min_value:
            extra = f" (or {', '.join(map(str, allow))} to disable)" if allow else ""
            raise argparse.ArgumentTypeError(f"{value} must be >= {min_value}{extra}")
        return value
    return convert


positive_int = _int_flag(1)
nonnegative_int = _int_flag(0)
int_or_disabled = _int_flag(1, allow=(-1, 0))  # -1 (and 0) disable a periodic action


def device_batch_size_flag(text):
    """A positive integer, or `auto` (the stage measures the device: nanochat/batch_probe.py)."""
    if str(text).strip().lower() == "auto":
        return "auto"
    return positive_int(text)


def float_flag(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def nonnegative_float(text):
    value = float_flag(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value:g} must be >= 0")
    return value


def resume_flag(text):
    text = str(text).strip()
    if text == "latest":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a step number nor 'latest'")
    if value < -1:
        raise argparse.ArgumentTypeError(f"{value} is not a step number")
    return None if value == -1 else str(value)


def bool_flag(text):
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (use 1 or 0)")


def add_training_flags(parser, **defaults):
    """Add the flags every training stage shares; keyword arguments override their defaults.

    --run, --device_type, --device_batch_size, --max_seq_len, --total_batch_size, --num_iterations, --grad_clip,
    --save_every, --keep_last, --resume_from_step, --model_tag, --run_id, --eval_every, --eval_tokens, --compile,
    --activation_checkpointing, the divergence guard's --divergence_guard, --spike_rtol, --spike_window,
    --spike_warmup and --data_skip, and the hidden --data_lanes (one process reads W data lanes: the single-process
    twin of a W-rank run).
    """
    d = dict(run="dummy", device_type="", device_batch_size=32, max_seq_len=2048, total_batch_size=524288,
             num_iterations=-1, grad_clip=1.0, save_every=500, keep_last=3, resume_from_step=None, model_tag=None,
             eval_every=250, eval_tokens=20 * 524288, data_lanes=1, run_id=None, compile="auto",
             activation_checkpointing=False, divergence_guard=True, spike_rtol=DEFAULT_SPIKE_RTOL,
             spike_window=DEFAULT_SPIKE_WINDOW, spike_warmup=DEFAULT_SPIKE_WARMUP, data_skip="")
    unknown = set(defaults) - set(d)
    if unknown:
        raise ValueError(f"unknown training flag defaults: {sorted(unknown)}")
    d.update(defaults)
    p = parser
    p.add_argument("--run", type=str, default=d["run"], help="W&B run name ('dummy' disables W&B)")
    p.add_argument("--device_type", type=str, default=d["device_type"], help="cuda|mps|cpu (empty: autodetect)")
    p.add_argument("--device_batch_size", type=device_batch_size_flag, default=d["device_batch_size"],
                   help="sequences per forward pass per device, or auto (probe the device; the total batch stays)")
    p.add_argument("--max_seq_len", type=positive_int, default=d["max_seq_len"], help="context length")
    p.add_argument("--total_batch_size", type=positive_int, default=d["total_batch_size"],
                   help="tokens per optimizer step, all ranks together")
    p.add_argument("--num_iterations", type=_int_flag(1, allow=(-1,)), default=d["num_iterations"],
                   help="optimizer steps (-1: derive)")
    p.add_argument("--grad_clip", type=float_flag, default=d["grad_clip"], help="gradient norm clip (0: off)")
    p.add_argument("--save_every", type=int_or_disabled, default=d["save_every"],
                   help="commit a checkpoint every N steps (-1: only at the end)")
    p.add_argument("--keep_last", type=nonnegative_int, default=d["keep_last"],
                   help="checkpoints kept besides the best val bpb (0: keep all)")
    p.add_argument("--resume_from_step", type=resume_flag, default=d["resume_from_step"],
                   help="resume from this checkpoint step, or 'latest'")
    p.add_argument("--model_tag", type=check_model_tag, default=d["model_tag"], help="checkpoint directory name")
    p.add_argument("--run_id", type=check_run_id, default=d["run_id"],
                   help="lineage id written into every checkpoint (default: $NANOCHAT_RUN_ID, else a new one)")
    p.add_argument("--eval_every", type=int_or_disabled, default=d["eval_every"],
                   help="evaluate every N steps (-1: off)")
    p.add_argument("--eval_tokens", type=positive_int, default=d["eval_tokens"], help="tokens per evaluation")
    p.add_argument("--data_lanes", type=positive_int, default=d["data_lanes"], help=argparse.SUPPRESS)
    p.add_argument("--compile", choices=COMPILE_MODES, default=d["compile"],
                   help=f"torch.compile the model and Newton-Schulz (auto: on CUDA, and on CPU from "
                        f"{COMPILE_AUTO_MIN_STEPS} steps)")
    p.add_argument("--activation_checkpointing", type=bool_flag, nargs="?", const=True,
                   default=d["activation_checkpointing"],
                   help="recompute each block's activations in the backward (less memory, ~1/3 more compute)")
    p.add_argument("--divergence_guard", type=bool_flag, nargs="?", const=True, default=d["divergence_guard"],
                   help="end the stage (exit 5) on a non-finite loss/gradient or a loss spike, before the update")
    p.add_argument("--spike_rtol", type=nonnegative_float, default=d["spike_rtol"],
                   help="a loss above RTOL x the median of the last --spike_window steps is a spike (0: off)")
    p.add_argument("--spike_window", type=positive_int, default=d["spike_window"],
                   help="steps in the spike rule's rolling median")
    p.add_argument("--spike_warmup", type=nonnegative_int, default=d["spike_warmup"],
                   help="no spike verdict before this step")
    p.add_argument("--data_skip", type=data_skip_flag, default=d["data_skip"],
                   help="STEP:COUNT[,...]: when STEP starts, discard COUNT steps of data first (set by rollbacks)")
    return parser


def data_skip_flag(text):
    try:
        parse_data_skip(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[-1])
    return str(text)


# ---------------------------------------------------------------------------------------------------------------------
# batch math

def valid_device_batch_sizes(total_batch_size, seq_len, world_size=1):
    """Device batch sizes B for which total_batch_size is a multiple of B·seq_len·world_size."""
    unit = seq_len * world_size
    if total_batch_size % unit:
        return []
    sequences = total_batch_size // unit
    return [b for b in range(1, sequences + 1) if sequences % b == 0]


def compute_grad_accum(total_batch_size, device_batch_size, seq_len, world_size=1) -> int:
    """total_batch_size / (B·T·world); UsageError naming the valid device batch sizes when it does not divide."""
    for name, value in (("total_batch_size", total_batch_size), ("device_batch_size", device_batch_size),
                        ("max_seq_len", seq_len)):
        if not isinstance(value, int) or value <= 0:
            raise UsageError(f"--{name} must be a positive integer, got {value!r}")
    per_step = device_batch_size * seq_len * world_size
    if total_batch_size % per_step == 0:
        return total_batch_size // per_step
    valid = valid_device_batch_sizes(total_batch_size, seq_len, world_size)
    ranks = f" x {world_size} ranks" if world_size > 1 else ""
    if valid:
        hint = f"valid device batch sizes: {', '.join(map(str, valid))}"
    else:
        hint = (f"no device batch size works: make --total_batch_size a multiple of "
                f"max_seq_len{' x ranks' if world_size > 1 else ''} = {seq_len * world_size}")
    raise UsageError(f"--total_batch_size={total_batch_size} is not a multiple of device_batch_size x max_seq_len"
                     f"{ranks} = {device_batch_size} x {seq_len}{ranks} = {per_step:,}; {hint}")
