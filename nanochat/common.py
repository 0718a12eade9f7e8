"""Shared runtime helpers: devices, torchrun/DDP setup, base directory, rank-0 printing, peak FLOPs, usage errors."""
import argparse
import os
import re
import sys
import tempfile

# torch is imported inside the functions that need it, so that light entry points (dataset download, report)
# that only use the usage-error and base-dir helpers start quickly.


# --------------------------------------------------------------------------------------------------------------------
# Usage errors: bad user input becomes one line on stderr and exit code 2, never a traceback.

class UsageError(Exception):
    """Bad user input. Entry points print `error: <message>` on one line and exit 2."""


def one_line(message) -> str:
    """Collapse a message onto a single line (usage errors must stay one line)."""
    return " ".join(str(message).split())


_TERMINAL_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_text(text: str) -> str:
    """Model output made safe to print: control characters (ESC, SO, C1...), which a terminal would act on (clear,
    reset, retitle, write the clipboard), become U+FFFD; newlines and tabs stay."""
    return _TERMINAL_CONTROL_RE.sub("\ufffd", text)


def run_main(fn, argv=None):
    """Run a script's `main()`; a UsageError becomes `error: <msg>` on stderr and exit 2.

    `fn` is called as `fn()` (or `fn(argv)` when argv is given). An int returned by `fn` is the exit code.
    """
    try:
        result = fn() if argv is None else fn(argv)
    except UsageError as exc:
        sys.stdout.flush()
        print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (which checkpoints and exits 4 on its own)
        sys.stdout.flush()
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises UsageError (one line, exit 2 through run_main) instead of printing usage and exiting."""

    def error(self, message):
        from nanochat.flag_aliases import did_you_mean  # names the closest known flag of an unknown one
        raise UsageError(f"{did_you_mean(message, self)} (see --help)")

    def parse_known_args(self, args=None, namespace=None):
        # `torchrun ... -m module -- --flags` (as upstream's speedrun and nanotui's plans launch) passes the `--`
        args = list(sys.argv[1:] if args is None else args)
        if args and args[0] == "--":
            args = args[1:]
        return super().parse_known_args(args, namespace)


# --------------------------------------------------------------------------------------------------------------------
# Devices and distributed setup.

def autodetect_device_type() -> str:
    """Best available device type: "cuda" > "mps" > "cpu"."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"environment variable {name}={value!r} is not an integer; "
                         f"unset it or launch with torchrun") from None


def _torchrun_env():
    """(launched_by_torchrun, rank, local_rank, world_size) from torchrun's environment variables."""
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    world_size = _env_int("WORLD_SIZE", 1)
    return launched, rank, local_rank, world_size


def get_dist_info():
    """(ddp, rank, local_rank, world_size). ddp is True only when a process group with more than one rank is up."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        world_size = dist.get_world_size()
        rank = dist.get_rank()
        local_rank = _env_int("LOCAL_RANK", rank)
        return world_size > 1, rank, local_rank, world_size
    _, rank, local_rank, world_size = _torchrun_env()
    return False, rank, local_rank, world_size


def is_rank0() -> bool:
    """True on rank 0 (or without distributed training)."""
    dist = sys.modules.get("torch.distributed")  # if torch was never imported there is no process group
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return _env_int("RANK", 0) == 0


def print0(*args, **kwargs):
    """print() on rank 0 only, always flushed (the supervisor tails our output)."""
    if is_rank0():
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)


ALLOC_CONF_DEFAULT = "expandable_segments:True"   # fewer fragmentation OOMs for varying shapes (evals, SFT)
ALLOC_CONF_NAMES = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")


def allocator_env_name(torch_version: str) -> str:
    """The allocator variable this torch reads: PYTORCH_ALLOC_CONF from 2.9 on (the CUDA-only name is deprecated
    there), PYTORCH_CUDA_ALLOC_CONF before."""
    m = re.match(r"(\d+)\.(\d+)", torch_version or "")
    major, minor = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    return "PYTORCH_ALLOC_CONF" if (major, minor) >= (2, 9) else "PYTORCH_CUDA_ALLOC_CONF"


def configure_allocator(environ=None, torch_version=None) -> str:
    """Give PyTorch's CUDA caching allocator its setting before any CUDA memory exists (compute_init calls this
    first, so every stage gets it): a value the user set under either name is kept and carried over to the name
    the installed torch reads; otherwise expandable segments. Returns the name set."""
    env = os.environ if environ is None else environ
    if torch_version is None:
        import torch
        torch_version = torch.__version__
    name = allocator_env_name(torch_version)
    value = next((env[n] for n in (name, *ALLOC_CONF_NAMES) if env.get(n)), ALLOC_CONF_DEFAULT)
    env.setdefault(name, value)
    return name


def compute_init(device_type=None, seed=42):
    """Set up the device and, under torchrun with WORLD_SIZE > 1, the process group (NCCL on CUDA, Gloo otherwise).

    Returns (ddp, rank, local_rank, world_size, device). Sets the CUDA allocator's variable first
    (configure_allocator). Seeds torch with `seed` (same on every rank: the model
    initialisation must agree across ranks). On CUDA enables TF32 matmuls and pins the device to LOCAL_RANK; off
    CUDA tunes glibc to reuse freed tensor memory (reuse_freed_memory).
    """
    import torch
    import torch.distributed as dist

    configure_allocator()   # before the first CUDA call below
    device_type = device_type or autodetect_device_type()
    if device_type not in ("cuda", "mps", "cpu"):
        raise UsageError(f"unknown device type {device_type!r}; use cuda, mps or cpu")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise UsageError("device type cuda requested but no CUDA GPU is visible; use --device_type=cpu")
    if device_type == "mps" and autodetect_device_type() != "mps":
        raise UsageError("device type mps requested but MPS is not available; use --device_type=cpu")

    launched, rank, local_rank, world_size = _torchrun_env()
    ddp = launched and world_size > 1
    if ddp and device_type == "mps":
        raise UsageError("multi-process training is not supported on MPS; run a single process")

    torch.manual_seed(seed)
    if device_type == "cuda":
        torch.cuda.manual_seed(seed)
        torch.set_float32_matmul_precision("high")
    else:
        reuse_freed_memory()

    if ddp and device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s) are "
                             f"visible; lower --nproc_per_node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl", device_id=device)
        dist.barrier()
    elif ddp:
        device = torch.device(device_type)
        if not dist.is_initialized():
            dist.init_process_group(backend="gloo")
        dist.barrier()
    elif device_type == "cuda":
        device = torch.device("cuda", local_rank if launched and local_rank < torch.cuda.device_count() else 0)
        torch.cuda.set_device(device)
    else:
        device = torch.device(device_type)
    return ddp, rank, local_rank, world_size, device


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MALLOC_TUNING_ENV = "NANOCHAT_MALLOC_TUNING"  # 0: leave glibc's defaults


def reuse_freed_memory() -> bool:
    """CPU training: let glibc keep freed tensors' memory for the next step instead of returning it to the kernel.

    By default glibc serves every block over 32 MiB with its own mmap and unmaps it on free, so each step's large
    tensors (the [B·T, vocab] logits and their gradient, the embedding and lm_head gradients: ~0.5 GiB per step at
    d4 / vocab 65,536 / T 512) come back as fresh pages: ~130,000 page faults and as many zeroed pages, every step.
    With the mmap threshold raised to 1 GiB and heap trimming off they come from the heap and are reused: no faults
    after the first step. The process keeps its peak heap (RSS) until it exits. Linux/glibc only; a no-op (False)
    elsewhere or when NANOCHAT_MALLOC_TUNING=0.
    """
    if os.environ.get(MALLOC_TUNING_ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (e.g. musl)
    ok = bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) or bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20))
    return bool(mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1)) and ok


def compute_cleanup():
    """Tear down the process group if one is up."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------------------------------------
# Base directory.

_verified_base_dirs = set()


def get_base_dir() -> str:
    """$NANOCHAT_BASE_DIR or ~/.cache/nanochat, created if missing; UsageError if it cannot be created or written."""
    configured = os.environ.get("NANOCHAT_BASE_DIR")
    base = os.path.abspath(os.path.expanduser(configured if configured else os.path.join("~", ".cache", "nanochat")))
    if base in _verified_base_dirs:
        return base
    fix = "set NANOCHAT_BASE_DIR to a writable directory"
    try:
        os.makedirs(base, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create base directory {base} ({exc.strerror or exc}); {fix}")
    try:
        with tempfile.NamedTemporaryFile(dir=base, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UsageError(f"base directory {base} is not writable ({exc.strerror or exc}); {fix}")
    _verified_base_dirs.add(base)
    return base


# --------------------------------------------------------------------------------------------------------------------
# Peak FLOPs and MFU.

# bf16 dense tensor-core peak (FLOP/s) by device name, as reported by torch.cuda.get_device_name. Names are
# normalised (lower case, "nvidia"/"geforce" dropped, single spaces) and must match a pattern in full, so that
# variants with a different peak (RTX 4090 D, laptop parts, H100 NVL vs SXM, MIG slices) are never given a
# wrong number: unknown cards get None and the trainer prints `mfu: n/a`.
PEAK_BF16_FLOPS = [
    (r"rtx 4090", 165.2e12),
    (r"rtx 3090", 71e12),
    (r"a100([ -].*)?", 312e12),
    (r"h100( \d+gb)? hbm3|h100 sxm5?( \d+gb)?( hbm3)?", 989e12),
    (r"h100( \d+gb)? pcie", 756e12),
    (r"h100 nvl", 835e12),
    (r"h200( \d+gb)?( hbm3e)?", 989e12),
    (r"l4", 121e12),
    (r"l40s", 362e12),
    (r"a10", 125e12),
]


def _normalise_device_name(name: str) -> str:
    name = name.lower()
    name = re.sub(r"\b(nvidia|geforce)\b", " ", name)
    return " ".join(name.split())


def peak_flops_for_name(name: str):
    """bf16 dense peak FLOP/s for a CUDA device name, or None when the card is not in the table."""
    normalised = _normalise_device_name(name)
    if "mig" in normalised.split():
        return None  # a slice of a GPU: the full-card peak would be wrong
    for pattern, flops in PEAK_BF16_FLOPS:
        if re.fullmatch(pattern, normalised):
            return flops
    return None


def get_peak_flops(device=None):
    """bf16 dense peak FLOP/s of the GPU in use; None for CPU, MPS and unknown cards (never a guess)."""
    import torch

    if device is None:
        device = autodetect_device_type()
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return peak_flops_for_name(torch.cuda.get_device_name(device))


def compute_mfu(flops_per_token, tokens_per_sec, peak_flops, world_size=1):
    """Model FLOPs utilisation in percent, or None when the peak is unknown."""
    if not peak_flops:
        return None
    return 100.0 * flops_per_token * tokens_per_sec / (peak_flops * world_size)


def format_mfu(value) -> str:
    """`45.67` for a percentage, `n/a` for None (the log field after `mfu: `)."""
    return "n/a" if value is None else f"{value:.2f}"


def eval_autocast(device):
    """bf16 autocast on CUDA (upstream evaluates, samples and chats in it), a no-op context elsewhere."""
    import contextlib

    import torch

    if torch.device(device).type == "cuda":
        return torch.amp.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------------------------------
# When to torch.compile (the model forward and Newton–Schulz): `--compile auto|on|off` of every training stage.

COMPILE_MODES = ("auto", "on", "off")
# auto compiles off CUDA only from this many optimizer steps on: on a CPU, compiling the model and Newton–Schulz
# costs minutes of inductor C++ builds, which short runs (unit tests, 20-step benchmarks) never earn back; the eager
# path is fused by hand (nanochat/softcap_loss.py, Muon's batched Newton–Schulz). An estimate: small models on a busy
# CPU (the cpu-demo's d2) gain more per step from compiling and can pay it back sooner (--compile=on).
COMPILE_AUTO_MIN_STEPS = 2000


def resolve_compile(mode, device_type, num_iterations) -> bool:
    """The compile decision for a run: `on` / `off` as given; `auto` = on for CUDA, on for CPU runs of at least
    COMPILE_AUTO_MIN_STEPS steps when a C++ compiler is on PATH (inductor needs one there), off otherwise (MPS).
    NANOCHAT_COMPILE=0 (or NANOCHAT_NO_COMPILE=1) in the environment means off whatever the mode."""
    import shutil

    if mode not in COMPILE_MODES:
        raise UsageError(f"--compile={mode!r}: use auto, on or off")
    if os.environ.get("NANOCHAT_COMPILE", "1") == "0" or os.environ.get("NANOCHAT_NO_COMPILE") == "1":
        return False
    if mode != "auto":
        return mode == "on"
    if device_type == "cuda":
        return True
    if device_type != "cpu" or num_iterations < COMPILE_AUTO_MIN_STEPS:
        return False
    return any(shutil.which(name) for name in ("c++", "g++", "clang++"))
