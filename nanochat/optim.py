"""Optimisers and schedules: Muon (Newton–Schulz orthogonalised momentum), DistMuon, DistAdamW, LR and momentum.

Under DDP the model is not wrapped in DistributedDataParallel: the Dist* optimisers average the gradients across
ranks themselves (reduce-scatter), update the share of parameters each rank owns and all-gather the results.
Their state is sharded, so every rank saves its own optimizer file.
"""
import os
import sys

import torch
import torch.distributed as dist

# quintic Newton–Schulz coefficients (maximise the slope at zero; singular values land in roughly [0.7, 1.2])
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)

_DTYPES_BY_NAME = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32,
                   "fp32": torch.float32, "float64": torch.float64}
_ns_precision_override = None


def set_ns_precision(dtype):
    """Process-wide Newton–Schulz dtype override (tests use torch.float32); None restores per-optimizer defaults.

    The environment variable NANOCHAT_NS_DTYPE=float32|bfloat16 sets the same override for subprocesses.
    """
    global _ns_precision_override
    if isinstance(dtype, str):
        dtype = _DTYPES_BY_NAME[dtype.lower()]
    _ns_precision_override = dtype


def _effective_ns_dtype(default):
    if _ns_precision_override is not None:
        return _ns_precision_override
    env = os.environ.get("NANOCHAT_NS_DTYPE")
    if env:
        if env.lower() not in _DTYPES_BY_NAME:
            raise ValueError(f"NANOCHAT_NS_DTYPE={env!r}: use float32 or bfloat16")
        return _DTYPES_BY_NAME[env.lower()]
    return default


def newton_schulz(G, steps=5, dtype=torch.bfloat16):
    """Approximately orthogonalise G (≈ U·Vᵀ of its SVD) by the quintic Newton–Schulz iteration in `dtype`."""
    a, b, c = NS_COEFFICIENTS
    X = G.to(dtype)
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if tall:
        X = X.mT
    return X


_compiled_newton_schulz = None


def _compile_wanted(device, setting=None) -> bool:
    """Compile Newton–Schulz when the optimizer's `compile_newton_schulz` says so (the trainer sets it from
    --compile), by default (None) on CUDA only; NANOCHAT_COMPILE=0 (the trainer's switch) and NANOCHAT_NO_COMPILE=1
    turn it off in every case."""
    if os.environ.get("NANOCHAT_COMPILE", "1") == "0" or os.environ.get("NANOCHAT_NO_COMPILE") == "1":
        return False
    if setting is not None:
        return bool(setting)
    return device.type == "cuda"


def _is_out_of_memory(exc) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _orthogonalise(G, steps, dtype, compile=None):
    """newton_schulz, compiled with torch.compile when _compile_wanted (eager otherwise or after a failure).

    A failure to compile falls back to eager for the rest of the process; an out-of-memory error is not a compile
    failure and propagates (the trainer's OOM handling must see it).
    """
    global _compiled_newton_schulz
    if _compile_wanted(G.device) if compile is None else _compile_wanted(G.device, compile):
        if _compiled_newton_schulz is None:
            try:
                _compiled_newton_schulz = torch.compile(newton_schulz, dynamic=False)
            except Exception:
                _compiled_newton_schulz = False
        if _compiled_newton_schulz:
            try:
                return _compiled_newton_schulz(G, steps, dtype)
            except Exception as exc:
                if _is_out_of_memory(exc):
                    raise
                _compiled_newton_schulz = False
                print(f"warning: torch.compile of Newton-Schulz failed ({type(exc).__name__}: "
                      f"{' '.join(str(exc).split())[:200]}); running it eagerly", file=sys.stderr, flush=True)
    return newton_schulz(G, steps, dtype)


def muon_update(grad, momentum_buffer, momentum, nesterov, ns_steps, ns_dtype, compile=None):
    """Momentum (optionally Nesterov) on grad, then orthogonalise; returns the update direction (buffer mutated)."""
    momentum_buffer.lerp_(grad, 1 - momentum)
    direction = grad.lerp(momentum_buffer, momentum) if nesterov else momentum_buffer
    return _orthogonalise(direction, ns_steps, ns_dtype, compile)


def muon_lr_scale(shape):
    """Shape-aware scale of the Muon step: max(1, rows/cols) ** 0.5."""
    return max(1.0, shape[-2] / shape[-1]) ** 0.5


def _group_by_shape(params):
    """Param groups of equal shape, in a deterministic order (order matters for optimizer state_dict loading)."""
    params = list(params)
    for p in params:
        if p.ndim != 2:
            raise ValueError(f"Muon only handles 2-D matrices, got a parameter of shape {tuple(p.shape)}")
    shapes = []
    for p in params:
        if tuple(p.shape) not in shapes:
            shapes.append(tuple(p.shape))
    return [dict(params=[p for p in params if tuple(p.shape) == shape]) for shape in shapes]


# Muon orthogonalises up to this many same-shape matrices in one batched Newton–Schulz (bounds the scratch memory:
# the stacked directions and their bf16 iterates; at d20 one group of 80 matrices of 1280x1280 would take ~1 GiB)
MUON_BATCH = 16


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton–Schulz, for 2-D weight matrices (single process).

    The matrices of a shape group are orthogonalised together (batches of MUON_BATCH): one batched Newton–Schulz
    instead of one per matrix, the same arithmetic per matrix with ~MUON_BATCH times fewer kernel launches.
    """

    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, ns_dtype=torch.bfloat16):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps)
        super().__init__(_group_by_shape(params), defaults)
        self.ns_dtype = ns_dtype  # kept off the param groups so state_dict stays plain values
        self.compile_newton_schulz = None  # None: on CUDA only; the trainer sets its --compile decision

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        ns_dtype = _effective_ns_dtype(self.ns_dtype)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for start in range(0, len(params), MUON_BATCH):
                self._step_batch(params[start:start + MUON_BATCH], group, ns_dtype)
        return loss

    def _step_batch(self, params, group, ns_dtype):
        """Momentum per matrix, then one batched Newton–Schulz over the stacked same-shape directions."""
        if not params:
            return
        momentum, nesterov = group["momentum"], group["nesterov"]
        directions = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - momentum)
            directions.append(p.grad.lerp(buf, momentum) if nesterov else buf)
        stacked = directions[0][None] if len(directions) == 1 else torch.stack(directions)
        updates = _orthogonalise(stacked, group["ns_steps"], ns_dtype, self.compile_newton_schulz)
        alpha = -group["lr"] * muon_lr_scale(params[0].shape)
        for p, update in zip(params, updates.unbind(0)):
            p.add_(update.to(p.dtype), alpha=alpha)


def _reduce_scatter_single(output, input, op, async_op):
    """reduce-scatter of one tensor along dim 0 (named reduce_scatter_single from torch 2.13 on)."""
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    return fn(output, input, op=op, async_op=async_op)


def _all_gather_single(output, input, async_op):
    """all-gather into one tensor along dim 0 (named all_gather_single from torch 2.13 on)."""
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return fn(output, input, async_op=async_op)


class DistMuon(torch.optim.Optimizer):
    """Muon under DDP: gradients are averaged by reduce-scatter, each rank orthogonalises its share of the
    matrices (round robin within each same-shape group) and the updated matrices are all-gathered.

    Needs an initialised process group (NCCL or Gloo). State (momentum buffers) exists only for owned matrices.
    """

    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, ns_dtype=torch.bfloat16):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps)
        super().__init__(_group_by_shape(params), defaults)
        self.ns_dtype = ns_dtype
        self.compile_newton_schulz = None  # None: on CUDA only; the trainer sets its --compile decision

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rank, world = dist.get_rank(), dist.get_world_size()
        ns_dtype = _effective_ns_dtype(self.ns_dtype)

        # 1) launch the reduce-scatters: chunk c of a group is params[c*world:(c+1)*world], param c*world+r -> rank r
        pending = []
        for group in self.param_groups:
            params = group["params"]
            for base in range(0, len(params), world):
                owned_index = base + rank
                grads = []
                for j in range(world):
                    index = base + j
                    if index < len(params) and params[index].grad is not None:
                        grads.append(params[index].grad)
                    else:
                        grads.append(torch.zeros_like(params[min(index, len(params) - 1)]))
                averaged = torch.empty_like(grads[rank])
                work = dist.reduce_scatter(averaged, grads, op=dist.ReduceOp.SUM, async_op=True)
                pending.append((group, base, owned_index, averaged, work))

        # 2) update the owned matrix of each chunk, then launch the all-gather of the chunk
        gathers = []
        for group, base, owned_index, averaged, work in pending:
            work.wait()
            params = group["params"]
            if owned_index < len(params):
                p = params[owned_index]
                averaged.div_(world)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(averaged)
                update = muon_update(averaged, state["momentum_buffer"], group["momentum"], group["nesterov"],
                                     group["ns_steps"], ns_dtype, self.compile_newton_schulz)
                p.add_(update.to(p.dtype), alpha=-group["lr"] * muon_lr_scale(p.shape))
                source = p
            else:
                source = torch.zeros_like(params[-1])  # padding: this rank owns nothing in this chunk
            outputs = [params[base + j] if base + j < len(params) else torch.empty_like(params[-1])
                       for j in range(world)]
            # the owned slot aliases `source`; gather into a scratch tensor there to keep buffers distinct
            outputs[rank] = torch.empty_like(source)
            gathers.append(dist.all_gather(outputs, source.contiguous(), async_op=True))
        for work in gathers:
            work.wait()
        return loss


class DistAdamW(torch.optim.Optimizer):
    """AdamW with ZeRO-style sharded state under DDP (same update rule as torch.optim.AdamW).

    A parameter whose first dimension divides by the world size is split along it: gradients are reduce-scattered
    (averaged), each rank updates its slice and keeps moments only for it, then slices are all-gathered. Other
    parameters are all-reduced and updated identically on every rank.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)

    @staticmethod
    def _adamw_update(p, grad, state, group):
        beta1, beta2 = group["betas"]
        lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        step = state["step"].item()
        if weight_decay != 0:
            p.mul_(1 - lr * weight_decay)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1 ** step
        bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        p.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rank, world = dist.get_rank(), dist.get_world_size()
        pending = []
        for group in self.param_groups:
            for p in group["params"]:
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                if p.ndim > 0 and p.size(0) % world == 0:
                    shard = torch.empty_like(grad.chunk(world)[rank])
                    work = _reduce_scatter_single(shard, grad.contiguous(), dist.ReduceOp.SUM, async_op=True)
                    pending.append((group, p, shard, True, work))
                else:
                    full = grad.clone()
                    work = dist.all_reduce(full, op=dist.ReduceOp.SUM, async_op=True)
                    pending.append((group, p, full, False, work))
        gathers = []
        for group, p, grad, sharded, work in pending:
            work.wait()
            grad.div_(world)
            if sharded:
                rows = p.size(0) // world
                p_slice = p[rank * rows:(rank + 1) * rows]
                self._adamw_update(p_slice, grad, self.state[p], group)
                gathers.append(_all_gather_single(p, p_slice, async_op=True))
            else:
                self._adamw_update(p, grad, self.state[p], group)
        for work in gathers:
            work.wait()
        return loss


# --------------------------------------------------------------------------------------------------------------------
# Schedules.

def get_lr_multiplier(it, num_iterations, warmup_ratio=0.0, warmdown_ratio=0.2, final_lr_frac=0.0) -> float:
    """LR multiplier at step `it`: optional linear warmup, flat at 1, then linear warm-down over the last
    `warmdown_ratio` of the run to `final_lr_frac` at `num_iterations`. Always within [0, 1]."""
    warmup_iters = round(warmup_ratio * num_iterations)
    warmdown_iters = round(warmdown_ratio * num_iterations)
    if it < warmup_iters:
        multiplier = (it + 1) / warmup_iters
    elif it <= num_iterations - warmdown_iters:
        multiplier = 1.0
    else:
        progress = (num_iterations - it) / warmdown_iters  # 1 at the start of warm-down, 0 at the end
        multiplier = progress + (1 - progress) * final_lr_frac
    return min(1.0, max(0.0, multiplier))


def get_muon_momentum(it, warmup_steps=300, start=0.85, end=0.95) -> float:
    """Muon momentum: linear from `start` to `end` over the first `warmup_steps` steps, then constant."""
    frac = min(max(it, 0) / warmup_steps, 1.0)
    return (1 - frac) * start + frac * end
