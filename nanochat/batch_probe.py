"""`--device_batch_size=auto`: measure real training steps at power-of-two batches on the device, keep the largest
that leaves the headroom; the total batch stays (gradient accumulation absorbs the choice).

Log lines (parsed by nanotui/core/logparse.py):
    Device batch probe: device_batch_size=16 peak=25.10GiB reserved=26.00GiB limit=21.59GiB -> too big
    Device batch probe: device_batch_size=32 peak=n/a reserved=n/a limit=21.59GiB -> OOM
    Device batch probe: device_batch_size=8 peak=14.20GiB reserved=15.00GiB limit=21.59GiB -> fits
    Device batch size auto: 8 (headroom 10%, limit 21.59GiB of 23.99GiB, measured on cuda)
    Eval batch size auto: 4 (validation at device_batch_size=8 needs 23.10GiB)       [only when smaller]
"""
import gc
import math
import os

import torch
import torch.distributed as dist

from nanochat.common import UsageError, get_dist_info, print0
from nanochat.trainer import (CUDA_MEMORY_CAP_ENV, FaultInjector, cuda_memory_cap_gib, is_oom_error)

AUTO = "auto"
HEADROOM_ENV = "NANOCHAT_AUTO_BS_HEADROOM"        # fraction of the device left free (default 0.10)
MAX_ENV = "NANOCHAT_AUTO_BS_MAX"                  # largest candidate to try (e.g. from `nanotui plan`)
FAKE_MEMORY_ENV = "NANOCHAT_FAKE_DEVICE_MEMORY_MIB"  # off CUDA: the device capacity to emulate
DEFAULT_HEADROOM = 0.10
DEFAULT_MAX_TOKENS = 131072  # without NANOCHAT_AUTO_BS_MAX: at most this many tokens per micro-batch (each candidate
#                              compiles once, and torch.compile stops specialising after 8 shapes)
GIB = 2**30
PROBE_STEPS = 2        # optimizer steps per candidate: the second one runs with the optimizer state allocated
PROBE_MICRO_STEPS = 2  # micro-steps per optimizer step (when accumulating): the second runs with gradients held


def headroom() -> float:
    text = os.environ.get(HEADROOM_ENV, "").strip()
    if not text:
        return DEFAULT_HEADROOM
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 <= value < 1):
        raise UsageError(f"{HEADROOM_ENV}={text!r} must be a fraction in [0, 1), e.g. 0.1")
    return value


def _env_positive(name, kind=int):
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = kind(text)
    except ValueError:
        value = 0
    if not value > 0 or (kind is float and not math.isfinite(value)):
        raise UsageError(f"{name}={text!r} must be a positive number")
    return value


def probe_candidates(per_rank_rows: int, limit=None) -> list:
    """Powers of two dividing `per_rank_rows` (sequences per rank per optimizer step), largest first."""
    out, b = [], 1
    while b <= per_rank_rows:
        if per_rank_rows % b == 0 and (limit is None or b <= limit):
            out.append(b)
        b *= 2
    return out[::-1]


def _tensor_bytes(tensors) -> int:
    seen = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


class _Meter:
    """Peak memory of the probe steps. CUDA: the caching allocator's peak allocated/reserved bytes plus the memory
    outside PyTorch (context, workspaces). Elsewhere: weights + gradients + optimizer state + the tensors autograd
    saves for backward (storages counted once) — what a device would have to hold at least."""

    def __init__(self, model, optimizers, device):
        self.model, self.optimizers, self.device = model, optimizers, device
        self.cuda = device.type == "cuda"
        self.peak = 0
        self.peak_reserved = 0
        self._saved = {}
        self.outside = 0
        if self.cuda:
            free, total = torch.cuda.mem_get_info(device)
            self.outside = max(0, total - free - torch.cuda.memory_reserved(device))

    def reset(self):
        self.peak = self.peak_reserved = 0
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def state_bytes(self, grads=True):
        tensors = list(self.model.parameters()) + list(self.model.buffers())
        if grads:
            tensors += [p.grad for p in self.model.parameters() if p.grad is not None]
        for opt in self.optimizers:
            for st in opt.state.values():
                tensors += [v for v in st.values() if isinstance(v, torch.Tensor)]
        return _tensor_bytes(tensors)

    def saved_hooks(self):
        self._saved = {}

        def pack(t):
            st = t.untyped_storage()
            self._saved[st.data_ptr()] = st.nbytes()
            return t
        return torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)

    def observe(self, extra=0):
        """Off CUDA: record the current accounted bytes (+ extra, e.g. live logits)."""
        if not self.cuda:
            params = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
            saved = sum(n for ptr, n in self._saved.items() if ptr not in params)
            self.peak = max(self.peak, self.state_bytes() + saved + extra)

    def finish(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) + self.outside
            self.peak_reserved = torch.cuda.max_memory_reserved(self.device) + self.outside
        else:
            self.peak_reserved = self.peak
        return self.peak, self.peak_reserved


def device_capacity(device) -> tuple:
    """(bytes the stage may use, where that number comes from)."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        cap = cuda_memory_cap_gib()
        if cap is not None:
            return min(total, int(cap * GIB)), f"cuda ({CUDA_MEMORY_CAP_ENV}={cap:g})"
        return total, "cuda"
    fake = _env_positive(FAKE_MEMORY_ENV, float)
    if fake is not None:
        return int(fake * 2**20), f"{device.type}, emulated {FAKE_MEMORY_ENV}={fake:g}"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), f"{device.type} (host memory)"
    except (ValueError, OSError, AttributeError):
        return 64 * GIB, f"{device.type} (assumed 64 GiB)"


def _agree(flag: bool, device) -> bool:
    """True when `flag` holds on any rank (ranks must take the same branch around collectives)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item() > 0


def _max_over_ranks(value: int, device) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([float(value)], device=device, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _fmt(nbytes):
    """`14.20GiB`, or `3.52MiB` below 1 GiB (tiny CPU models), `n/a` when unknown (after an OOM)."""
    if nbytes is None:
        return "n/a"
    return f"{nbytes / GIB:.2f}GiB" if nbytes >= GIB else f"{nbytes / 2**20:.2f}MiB"


class DeviceBatchProbe:
    """Runs the probe on `model` (initialised, on the device) with its `optimizers`; leaves both as it found them
    (weights restored from a CPU copy, optimizer state emptied, gradients freed, RNG restored)."""

    def __init__(self, model, optimizers, device, seq_len, vocab_size, per_rank_rows, accum_for, forward=None,
                 autocast=None):
        self.model, self.optimizers = model, list(optimizers)
        self.device = torch.device(device)
        self.T, self.V = seq_len, vocab_size
        self.per_rank_rows = per_rank_rows
        self.accum_for = accum_for          # device_bs -> gradient accumulation steps
        # not `forward or model`: a torch.compile'd module has no truth value (its __len__ raises TypeError)
        self.forward = model if forward is None else forward
        self.autocast = autocast
        self.fault = FaultInjector()
        self.rows = []                      # [{device_bs, peak_gib, reserved_gib, outcome}]

    def _ctx(self):
        if self.autocast is not None:
            return self.autocast()
        if self.device.type == "cuda":
            return torch.amp.autocast(device_type="cuda", dtype=torch.bfloat16)
        from contextlib import nullcontext
        return nullcontext()

    def _batch(self, rows, gen):
        x = torch.randint(0, self.V, (rows, self.T + 1), generator=gen).to(self.device)
        return x[:, :-1].contiguous(), x[:, 1:].contiguous()

    def _free(self):
        self.model.zero_grad(set_to_none=True)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _train_peak(self, b, meter, gen):
        """Peak (allocated, reserved) bytes of PROBE_STEPS real optimizer steps at device batch b, or None (OOM)."""
        micro = min(PROBE_MICRO_STEPS, self.accum_for(b))
        meter.reset()
        for _ in range(PROBE_STEPS):
            oom = False
            try:
                for _ in range(micro):
                    x, y = self._batch(b, gen)
                    self.fault.check(b, 0)
                    with meter.saved_hooks():
                        with self._ctx():
                            loss = self.forward(x, y)
                        meter.observe()
                        (loss / micro).backward()
                    del loss, x, y
                    meter.observe()
            except Exception as exc:
                if not is_oom_error(exc):
                    raise
                oom = True
            if _agree(oom, self.device):
                return None
            for opt in self.optimizers:
                opt.step()
            meter.observe()
            self.model.zero_grad(set_to_none=True)
        peak, reserved = meter.finish()
        return _max_over_ranks(peak, self.device), _max_over_ranks(reserved, self.device)

    def _eval_peak(self, b, meter, gen):
        """Peak bytes of one no-grad validation forward at b rows (per-token losses, as evaluate_bpb)."""
        self.model.eval()
        meter.reset()
        oom = False
        try:
            x, y = self._batch(b, gen)
            self.fault.check(b, 0)
            with torch.no_grad(), self._ctx():
                loss = self.model(x, y, loss_reduction="none")
                extra = 0
                if meter.cuda is False:  # off CUDA: count the fp32 logits the forward materialises
                    extra = b * self.T * self.V * 4
                meter.observe(extra)
            del loss, x, y
        except Exception as exc:
            if not is_oom_error(exc):
                raise
            oom = True
        finally:
            self.model.train()
        if _agree(oom, self.device):
            return None
        return _max_over_ranks(meter.finish()[1], self.device)

    def run(self, limit_candidates=None, capacity=None, headroom_frac=None):
        """Returns (device_bs or None, eval_bs or None, capacity bytes, limit bytes, source)."""
        cap, source = capacity if capacity is not None else device_capacity(self.device)
        frac = headroom() if headroom_frac is None else headroom_frac
        limit = int(cap * (1 - frac))
        cands = probe_candidates(self.per_rank_rows, limit_candidates)
        if not cands:
            raise UsageError(f"--device_batch_size=auto: no power-of-two device batch divides the {self.per_rank_rows}"
                             f" sequences per rank of the total batch; give --device_batch_size explicitly")
        snapshot = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        lrs = [[(g.get("lr"), g.get("momentum")) for g in opt.param_groups] for opt in self.optimizers]
        gen = torch.Generator().manual_seed(1234)
        meter = _Meter(self.model, self.optimizers, self.device)
        chosen = eval_bs = first_need = None
        try:
            for b in cands:
                result = None
                try:
                    result = self._train_peak(b, meter, gen)
                finally:
                    self._free()
                if result is None:
                    outcome, peak, reserved = "OOM", None, None
                else:
                    peak, reserved = result
                    outcome = "fits" if reserved <= limit else "too big"
                self.rows.append({"device_bs": b, "peak_gib": None if peak is None else round(peak / GIB, 6),
                                  "reserved_gib": None if reserved is None else round(reserved / GIB, 6),
                                  "outcome": outcome})
                print0(f"Device batch probe: device_batch_size={b} peak={_fmt(peak)} reserved={_fmt(reserved)} "
                       f"limit={_fmt(limit)} -> {outcome}")
                if outcome == "fits":
                    chosen = b
                    break
            if chosen is not None:
                for b in [c for c in cands if c <= chosen]:
                    need = None
                    try:
                        need = self._eval_peak(b, meter, gen)
                    finally:
                        self._free()
                    if need is not None and need <= limit:
                        eval_bs = b
                        break
                    if b == chosen:
                        first_need = need
                if eval_bs is None or eval_bs < chosen:
                    need = _fmt(first_need) if first_need is not None else "more than the device (OOM)"
                    print0(f"Eval batch size auto: {eval_bs if eval_bs is not None else 'none fits'} (validation at "
                           f"device_batch_size={chosen} needs {need})")
        finally:
            # leave the model and optimizers as found: the stage (or its resume) starts from them
            for opt, groups in zip(self.optimizers, lrs):
                opt.state.clear()
                for g, (lr, mom) in zip(opt.param_groups, groups):
                    if lr is not None:
                        g["lr"] = lr
                    if mom is not None:
                        g["momentum"] = mom
            with torch.no_grad():
                self.model.load_state_dict(snapshot)
            del snapshot
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, self.device)
            self._free()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
        if chosen is None:
            print0(f"Device batch size auto: none fits (headroom {frac:.0%}, limit {_fmt(limit)} of {_fmt(cap)}, "
                   f"measured on {source})")
        else:
            print0(f"Device batch size auto: {chosen} (headroom {frac:.0%}, limit {_fmt(limit)} of {_fmt(cap)}, "
                   f"measured on {source})")
        return chosen, eval_bs, cap, limit, source


def resolve_device_batch_size(args, model, optimizers, device, *, vocab_size, sequences=False, compile_model=False,
                              autocast=None):
    """The stage's one call: when `args.device_batch_size` is "auto", probe and set it (and `args.eval_batch_size`
    when evaluation needs a smaller batch); otherwise leave args alone. `sequences`: the total batch counts
    sequences (SFT's examples per step) rather than tokens. Raises torch.OutOfMemoryError when nothing fits (the
    stage's startup-OOM wrapper turns that into the `OOM:` line and exit 3). `compile_model`: probe through
    torch.compile as the trainer will train (on CUDA, unless NANOCHAT_COMPILE=0)."""
    if getattr(args, "eval_batch_size", None) is None:
        args.eval_batch_size = None
    if args.device_batch_size != AUTO:
        return args.device_batch_size
    world = get_dist_info()[3]
    total, T = args.total_batch_size, args.max_seq_len
    unit = world if sequences else T * world
    if total % unit:
        raise UsageError(f"--device_batch_size=auto: the total batch {total} is not a multiple of "
                         f"{'ranks' if sequences else 'max_seq_len x ranks'} = {unit}")
    per_rank = total // unit
    forward = None
    if compile_model and torch.device(device).type == "cuda" and os.environ.get("NANOCHAT_COMPILE", "1") != "0":
        forward = torch.compile(model, dynamic=False)
    probe = DeviceBatchProbe(model, optimizers, device, T, vocab_size, per_rank,
                             accum_for=lambda b: per_rank // b, forward=forward, autocast=autocast)
    cap = _env_positive(MAX_ENV) or max(1, DEFAULT_MAX_TOKENS // T)
    chosen, eval_bs, *_ = probe.run(limit_candidates=cap)
    if chosen is None:
        raise torch.OutOfMemoryError("CUDA out of memory: --device_batch_size=auto found no batch size that fits "
                                     "(even device_batch_size=1)")
    args.device_batch_size = chosen
    if eval_bs is not None and eval_bs < chosen:
        args.eval_batch_size = eval_bs
    args.device_batch_probe = probe.rows
    return chosen

