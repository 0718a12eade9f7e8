"""Out-of-memory handling shared by the trainer and the batch probe: detection, the startup-OOM wrapper, the
emulated memory cap."""
import math
import os
import sys

import torch

from nanochat.common import UsageError, print0

CUDA_MEMORY_CAP_ENV = "NANOCHAT_CUDA_MEMORY_CAP_GIB"  # cap this process's CUDA memory (emulate a smaller card)


def is_oom_error(exc) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def exit_3_on_startup_oom(main):
    """Wrap a stage's `main(argv)` so that an OOM before the training loop (loading or moving the model to the GPU)
    ends like one inside it: the `OOM:` line (nothing to save yet) and exit 3, which the supervisor's ladder reads."""
    def wrapped(argv=None):
        try:
            return main(argv)
        except Exception as exc:
            if not is_oom_error(exc):
                raise
            bs = _flag_value(sys.argv[1:] if argv is None else argv, "device_batch_size")
            print0(f"OOM: CUDA out of memory at device_batch_size={bs or '?'}, step 0; emergency checkpoint: none")
            print(f"torch.OutOfMemoryError: {' '.join(str(exc).split())[:300]}", file=sys.stderr, flush=True)
            return 3
    wrapped.__doc__ = main.__doc__
    return wrapped


def _flag_value(argv, name):
    """The value of `--name=V` / `--name V` (dashes or underscores) in argv, or None."""
    spellings = {f"--{name}", f"--{name.replace('_', '-')}"}
    for i, token in enumerate(argv):
        key, eq, value = token.partition("=")
        if key in spellings:
            return value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
    return None


def cuda_memory_cap_gib():
    """NANOCHAT_CUDA_MEMORY_CAP_GIB as a positive float (GiB), None when unset; UsageError when malformed."""
    text = os.environ.get(CUDA_MEMORY_CAP_ENV, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"{CUDA_MEMORY_CAP_ENV}={text!r} must be a positive number of GiB (e.g. 24); unset it to "
                         f"use the whole card")
    return value


def cuda_memory_fraction(cap_gib: float, total_bytes: int) -> float:
    """The torch.cuda.set_per_process_memory_fraction argument that caps a card of `total_bytes` at `cap_gib`."""
    return min(1.0, cap_gib * 2**30 / total_bytes)


class OutOfMemory(Exception):
    """Raised out of a step that ran out of memory before any weight changed (the message is kept, not the frames)."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message


def one_line(exc, limit=300):
    """An exception's text as one line of at most `limit` characters."""
    return " ".join(str(exc).split())[:limit]
