"""The shared resumable training loop of base/mid/SFT: setup and resume, steps, logging, checkpoints, exits.

Its parts live in nanochat/training/ by role (flags, OOM, fault injection, signals, RNG, W&B, the step hook); the
names stage scripts and tests import from here are re-exported below.
"""
import gc
import math
import os
import secrets
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist

from nanochat.checkpoint import (CheckpointError, CheckpointLock, apply_plan, checkpoint_dir, disk_full_error,
                                 load_checkpoint, moved_aside_dirs, plan_resume, read_meta, run_id_from,
                                 save_checkpoint, update_meta)
from nanochat.common import UsageError, compute_mfu, get_dist_info, get_peak_flops, print0, resolve_compile
from nanochat.optim import get_muon_momentum
from nanochat.training.faults import FAULT_OOM_ENV, FAULT_OOM_STEP_ENV, FaultInjector
from nanochat.training.flags import (FlagParser, add_training_flags, bool_flag, compute_grad_accum,
                                     device_batch_size_flag, float_flag, int_or_disabled, nonnegative_float,
                                     nonnegative_int, positive_int, resume_flag, valid_device_batch_sizes)
from nanochat.training.hook import StepHook
from nanochat.training.oom import (CUDA_MEMORY_CAP_ENV, OutOfMemory, cuda_memory_cap_gib,
                                   cuda_memory_fraction, exit_3_on_startup_oom, is_oom_error, one_line)
from nanochat.training.rng import capture_rng, restore_rng
from nanochat.training.samples import printable_sample
from nanochat.training.signals import StopSignals, Stopped
from nanochat.training.wandb_run import DummyWandb, start_wandb

# what stage scripts, the batch probe, benchmarks and tests import from nanochat.trainer
__all__ = ["CUDA_MEMORY_CAP_ENV", "EMA_BETA", "EXIT_FAILED", "EXIT_OK", "EXIT_OOM", "EXIT_STOPPED", "EXIT_USAGE",
           "FAULT_OOM_ENV", "FAULT_OOM_STEP_ENV", "FaultInjector", "FlagParser", "LoopState", "StepHook", "StopSignals",
           "Trainer", "add_training_flags", "bool_flag", "capture_rng", "compute_grad_accum", "cuda_memory_cap_gib",
           "cuda_memory_fraction", "device_batch_size_flag", "exit_3_on_startup_oom", "float_flag", "int_or_disabled",
           "is_oom_error", "nonnegative_float", "nonnegative_int", "positive_int", "printable_sample", "restore_rng",
           "resume_flag", "valid_device_batch_sizes"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_OOM, EXIT_STOPPED = 0, 1, 2, 3, 4  # EXIT_FAILED also = disk full
EMA_BETA = 0.9


class _DiskFull(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.message = message


# ---------------------------------------------------------------------------------------------------------------------
# loop state and helpers

@dataclass
class LoopState:
    """What, besides weights/optimizers/data position/RNG, an exact resume needs."""
    smooth_train_loss: float = 0.0      # raw EMA of the train loss (debiased when printed)
    min_val_bpb: float = float("inf")
    last_val_bpb: float = None
    total_training_time: float = 0.0    # seconds, steps after the 10th only (as upstream)

    def to_json(self):
        data = asdict(self)
        if not math.isfinite(data["min_val_bpb"]):
            data["min_val_bpb"] = None
        return data

    @classmethod
    def from_json(cls, data):
        data = dict(data or {})
        if data.get("min_val_bpb") is None:
            data["min_val_bpb"] = float("inf")
        known = {k: data[k] for k in ("smooth_train_loss", "min_val_bpb", "last_val_bpb", "total_training_time")
                 if k in data}
        return cls(**known)


def _all_gather_json(obj, world_size):
    if world_size <= 1 or not dist.is_initialized():
        return [obj]
    out = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# the trainer

class Trainer:
    """One training stage's loop, shared by base_train, mid_train and chat_sft. See docs/CONTRACTS.md (trainer.py).

    Step numbering: checkpoint step S = the state after S optimizer steps; the loop body at index S runs the
    checkpoint (if due), the evaluators, then trains step S (printed as `step S/N`).
    """

    def __init__(self, *, args, stage, model_tag, model, optimizers, device, make_train_loader, num_iterations,
                 lr_multiplier, muon_momentum=get_muon_momentum, flops_per_token=None, meta=None,
                 user_config=None, evaluators=(), hook=None, compile_model=None, wandb_project="nanochat",
                 grad_accum_steps=None, on_step=None, save_checkpoints=True, total_batch_size=None):
        self.args = args
        self.stage = stage
        self.model_tag = model_tag
        self.model = model
        self.optimizers = list(optimizers)
        self.device = torch.device(device)
        self.make_train_loader = make_train_loader
        self.num_iterations = int(num_iterations)
        self.lr_multiplier = lr_multiplier
        self.muon_momentum = muon_momentum
        self.flops_per_token = flops_per_token
        self.meta_extra = dict(meta or {})
        self.user_config = dict(user_config or vars(args))
        self.evaluators = list(evaluators)
        self.hook = hook if hook is not None else StepHook()
        self.wandb_project = wandb_project
        self.on_step = on_step                    # fn(trainer, step, metrics dict) after each step's log line
        self.save_checkpoints = save_checkpoints  # False only for benchmarks: nothing is written
        if self.num_iterations < 0:
            raise UsageError(f"number of iterations must be >= 0, got {self.num_iterations}")

        self.ddp, self.rank, self.local_rank, self.world_size = get_dist_info()
        self.master = self.rank == 0
        self.B = args.device_batch_size
        self.T = args.max_seq_len
        self.lanes = getattr(args, "data_lanes", 1) or 1
        if self.lanes > 1 and self.ddp:
            raise UsageError("--data_lanes is for a single process; under torchrun the ranks are the lanes")
        # per optimizer step, all ranks: tokens (base, mid) or whatever unit the stage counts in (SFT: conversations)
        self.total_batch_size = args.total_batch_size if total_batch_size is None else total_batch_size
        if grad_accum_steps is None:
            # with W data lanes one process runs the micro-batches of all W virtual ranks in turn: the same batch
            # math as a single rank, the same tokens and gradient as a W-rank run
            grad_accum_steps = compute_grad_accum(args.total_batch_size, self.B, self.T, self.world_size)
        self.grad_accum_steps = int(grad_accum_steps)
        self.save_every = args.save_every if args.save_every and args.save_every > 0 else 0
        self.keep_last = getattr(args, "keep_last", 3)
        self.grad_clip = getattr(args, "grad_clip", 1.0) or 0.0
        self.ckpt_dir = checkpoint_dir(stage, model_tag)
        self.fault = FaultInjector()
        self.cuda_memory_cap_gib = cuda_memory_cap_gib()  # applied in setup(), on CUDA only
        self.peak_flops = get_peak_flops(self.device)
        # --compile (docs/CONTRACTS.md): decided from the total steps, so a resumed run keeps its mode (exactness)
        self.compile = resolve_compile(getattr(args, "compile", "auto"), self.device.type, self.num_iterations)
        for opt in self.optimizers:  # Newton-Schulz follows the run's mode
            if hasattr(opt, "compile_newton_schulz"):
                opt.compile_newton_schulz = self.compile
        if compile_model is None:
            compile_model = self.compile
        self.forward_model = torch.compile(model, dynamic=False) if compile_model else model
        if getattr(args, "activation_checkpointing", False):
            model.activation_checkpointing = True

        self.state = LoopState()
        self.step = 0
        self.start_step = 0
        self.loader = None
        self.wandb_run = DummyWandb()
        self.wandb_run_id = None
        self.last_saved_step = None
        self.evals_done_at_start = False
        self.current_val_bpb = None  # measured at the current step (goes into that step's meta)
        self.signals = None
        self.run_id = None           # this stage's lineage id (set in setup: flag, env, resumed checkpoint or new)
        self.init_run_id = run_id_from(getattr(args, "run_id", None))
        self._lock = None            # CheckpointLock on the checkpoint directory (rank 0), held for the stage
        self._phase = "setup"
        self._snapshot = None        # (step, loader state, rng) at the start of the step in flight

    # ---- small helpers for stage scripts ---------------------------------------------------------------------------

    def autocast(self):
        if self.device.type == "cuda":
            return torch.amp.autocast(device_type="cuda", dtype=torch.bfloat16)
        return nullcontext()

    def eval_forward(self, x, y=None, **kwargs):
        """Model forward for evaluation (fault injection and autocast included); use for bpb/loss evals."""
        self.fault.check(x.size(0), self.step)
        with self.autocast():
            return self.model(x, y, **kwargs) if y is not None else self.model(x, **kwargs)

    def log_metrics(self, data: dict):
        """Log to W&B (rank 0, when --run is not dummy)."""
        self.wandb_run.log(data)

    def record_val_bpb(self, step, val_bpb):
        """Print `Step 00250 | Validation bpb: 1.2345`, track the minimum, log to W&B."""
        print0(f"Step {step:05d} | Validation bpb: {val_bpb:.4f}")
        self.state.min_val_bpb = min(self.state.min_val_bpb, val_bpb)
        self.state.last_val_bpb = val_bpb
        self.current_val_bpb = val_bpb
        self.log_metrics({"step": step, "total_training_flops": self._flops_so_far(step),
                          "total_training_time": self.state.total_training_time, "val/bpb": val_bpb})

    def record_val_loss(self, step, val_loss):
        """Print `Step 00100 | Validation loss: 1.234567` (SFT style) and log it."""
        print0(f"Step {step:05d} | Validation loss: {val_loss:.6f}")
        self.log_metrics({"step": step, "val_loss": val_loss})

    def stop_requested(self) -> bool:
        return bool(self.signals and self.signals.received)

    def _flops_so_far(self, step):
        return (self.flops_per_token or 0.0) * self.total_batch_size * step

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ---- setup -----------------------------------------------------------------------------------------------------

    def _check_ckpt_dir_writable(self):
        if not self.master or not self.save_checkpoints:
            return
        try:
            os.makedirs(self.ckpt_dir, exist_ok=True)
            probe = os.path.join(self.ckpt_dir, f".write-test.tmp.{os.getpid()}")
            with open(probe, "wb"):
                pass
            os.unlink(probe)
        except OSError as exc:
            raise UsageError(f"checkpoint directory {self.ckpt_dir} is not writable ({exc.strerror or exc}); "
                             f"set NANOCHAT_BASE_DIR to a writable directory")

    def _plan_lineage(self):
        """Rank 0 decides the start step and lineage (checkpoint.plan_resume) and, under the lock, moves other
        lineages' (and abandoned) steps aside; the other ranks receive the decision. Returns the start step."""
        requested = getattr(self.args, "resume_from_step", None)
        decision = None
        if self.master:
            try:
                plan = plan_resume(self.ckpt_dir, requested, self.init_run_id)
                if plan.step is not None:  # refuse an incompatible checkpoint before anything is moved
                    self._check_compatible(read_meta(self.ckpt_dir, plan.step), plan.step)
                if plan.continued:
                    print0(f"Continuing run {plan.run_id} from its checkpoint step {plan.step} in {self.ckpt_dir}")
                if plan.step is None and requested == "latest" and self.init_run_id:
                    for where in moved_aside_dirs(self.ckpt_dir, self.init_run_id):  # e.g. by a standalone run
                        print0(f"Note: checkpoints of this run {self.init_run_id} were moved aside to {where}; this "
                               f"start is fresh; to continue them instead, resume with "
                               f"--model_tag={os.path.basename(where)}")
                if self.save_checkpoints:
                    apply_plan(self.ckpt_dir, plan)
                decision = {"run_id": plan.run_id, "step": plan.step}
            except UsageError as exc:
                decision = {"error": str(exc)}
        if self.ddp:
            box = [decision]
            dist.broadcast_object_list(box, src=0)
            decision = box[0]
        if "error" in decision:
            raise UsageError(decision["error"])
        self.run_id = decision["run_id"]
        if self._lock is not None:
            self._lock.update(self.run_id)
        return decision["step"]

    def _resume(self):
        """Restore model, optimizers, loop state, RNG, data position and W&B id; returns this rank's loader state."""
        requested = getattr(self.args, "resume_from_step", None)
        step = self._plan_lineage()
        if step is None:
            if requested == "latest":
                print0(f"No checkpoint to resume from in {self.ckpt_dir}; starting fresh")
            return None
        try:
            model_state, optim_states, meta = load_checkpoint(self.ckpt_dir, step, self.device, rank=self.rank)
        except CheckpointError as exc:
            raise UsageError(f"cannot resume from step {step} in {self.ckpt_dir}: {exc}")
        self._check_compatible(meta, step)
        model_state = {k.removeprefix("_orig_mod."): v for k, v in model_state.items()}
        try:
            self.model.load_state_dict(model_state, strict=True)
        except RuntimeError as exc:
            raise UsageError(f"checkpoint step {step} in {self.ckpt_dir} does not fit this model "
                             f"({' '.join(str(exc).split())[:200]}); use the flags it was trained with")
        del model_state
        if not isinstance(optim_states, list) or len(optim_states) != len(self.optimizers):
            count = len(optim_states) if isinstance(optim_states, list) else "no"
            raise UsageError(f"checkpoint step {step} in {self.ckpt_dir} holds {count} optimizer states for rank "
                             f"{self.rank}, this stage has {len(self.optimizers)}")
        try:
            for opt, opt_state in zip(self.optimizers, optim_states):
                opt.load_state_dict(opt_state)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise UsageError(f"the optimizer state of checkpoint step {step} in {self.ckpt_dir} does not fit "
                             f"({' '.join(str(exc).split())[:200]})")
        del optim_states
        self.state = LoopState.from_json(meta.get("loop_state"))
        self.current_val_bpb = meta.get("val_bpb")
        rng = (meta.get("rng") or [None] * self.world_size)
        restore_rng(rng[self.rank] if self.rank < len(rng) else None, self.device)
        self.wandb_run_id = meta.get("wandb_run_id")
        self.start_step = self.step = step
        self.last_saved_step = step
        self.evals_done_at_start = bool(meta.get("evals_done"))
        loader_states = meta.get("loader_states") or []
        print0(f"Resuming optimization from step {step} (device batch size {self.B}, gradient accumulation "
               f"steps {self.grad_accum_steps})")
        return loader_states[self.rank] if self.rank < len(loader_states) else None

    def _check_compatible(self, meta, step):
        def mismatch(what, then, now, fix):
            raise UsageError(f"checkpoint step {step} in {self.ckpt_dir} was trained with {what}={then}, this run "
                             f"has {now}; {fix}")
        cfg = self.meta_extra.get("model_config")
        if cfg is not None and meta.get("model_config") is not None and meta["model_config"] != cfg:
            mismatch("model_config", meta["model_config"], cfg, "use the same model flags (e.g. --depth)")
        if meta.get("total_batch_size") not in (None, self.total_batch_size):
            mismatch("total_batch_size", meta["total_batch_size"], self.total_batch_size,
                     f"pass --total_batch_size={meta['total_batch_size']} (only the device batch may change)")
        if meta.get("max_seq_len") not in (None, self.T):
            mismatch("max_seq_len", meta["max_seq_len"], self.T, f"pass --max_seq_len={meta['max_seq_len']}")
        if meta.get("world_size") not in (None, self.world_size):
            mismatch("world size", meta["world_size"], self.world_size,
                     f"resume with --nproc_per_node={meta['world_size']} (optimizer state is sharded per rank)")
        if meta.get("data_lanes", 1) != self.lanes:
            mismatch("data_lanes", meta.get("data_lanes", 1), self.lanes, "keep --data_lanes")

    def _init_wandb(self):
        if self.wandb_run_id is None:
            self.wandb_run_id = secrets.token_hex(4)
        self.wandb_run = start_wandb(project=self.wandb_project, run_name=getattr(self.args, "run", "dummy"),
                                     run_id=self.wandb_run_id, master=self.master, config=self.user_config)

    # ---- checkpoints -----------------------------------------------------------------------------------------------

    def _meta_for(self, step, loader_state, rng_state, reason):
        loader_states = _all_gather_json(loader_state, self.world_size)
        rng_states = _all_gather_json(rng_state, self.world_size)
        meta = dict(self.meta_extra)
        meta.update({
            "stage": self.stage, "model_tag": self.model_tag, "user_config": self.user_config,
            "total_batch_size": self.total_batch_size, "device_batch_size": self.B, "max_seq_len": self.T,
            "grad_accum_steps": self.grad_accum_steps, "num_iterations": self.num_iterations,
            "data_lanes": self.lanes, "val_bpb": None, "evals_done": False, "reason": reason,
            "loop_state": self.state.to_json(), "loader_states": loader_states, "rng": rng_states,
            "wandb_run_id": self.wandb_run_id, "run_id": self.run_id,
        })
        return meta

    def save(self, step, reason="periodic", loader_state=None, rng_state=None):
        """Commit checkpoint `step` (collective under DDP). Defaults: the loader position and RNG right now."""
        if not self.save_checkpoints:
            return
        if loader_state is None:
            loader_state = self._loader_state()
        if rng_state is None:
            rng_state = capture_rng(self.device)
        phase, self._phase = self._phase, "save"
        meta = self._meta_for(step, loader_state, rng_state, reason)
        model_state = self.model.state_dict() if self.master else None
        optim_states = [opt.state_dict() for opt in self.optimizers]
        try:
            save_checkpoint(self.ckpt_dir, step, model_state, optim_states, meta, rank=self.rank,
                            world_size=self.world_size, keep_last=self.keep_last)
        except Exception as exc:
            full = disk_full_error(exc)
            if full is None:
                raise
            raise _DiskFull(f"{full.strerror or full} while writing checkpoint step {step:06d} to {self.ckpt_dir}")
        self.last_saved_step = step
        self._phase = phase

    def _loader_state(self):
        fn = getattr(self.loader, "state_dict", None)
        return fn() if fn is not None else None

    def _mark_evals_done(self, step):
        if self.master and self.last_saved_step == step:
            try:
                update_meta(self.ckpt_dir, step, {"val_bpb": self.current_val_bpb, "evals_done": True,
                                                  "loop_state": self.state.to_json()})
            except (CheckpointError, OSError) as exc:  # e.g. disk full: the step stays valid without the eval
                print(f"warning: could not record evaluations in checkpoint step {step}: {exc}", file=sys.stderr)

    # ---- one optimizer step ----------------------------------------------------------------------------------------

    def _next_batch(self):
        if hasattr(self.loader, "next_batch"):
            return self.loader.next_batch()
        return next(self.loader)

    def _train_step(self, step):
        """Run optimizer step `step`. Raises OutOfMemory / Stopped before any weight changed."""
        model, accum = self.model, self.grad_accum_steps
        self._snapshot = (step, self._loader_state(), capture_rng(self.device))
        self._sync()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float32, device=self.device)
        tokens = torch.zeros((), dtype=torch.float64, device=self.device)
        target_tokens = torch.zeros((), dtype=torch.float64, device=self.device)
        oom = None
        stop = False
        self._phase = "fwdbwd"
        try:
            for _ in range(accum):
                if not self.ddp and self.stop_requested():
                    stop = True
                    break
                batch = self._next_batch()
                self.fault.check(batch[0].size(0), step)
                loss = self.hook.micro_loss(self, batch)
                loss_sum += loss.detach().float()
                tokens += batch[0].numel()
                if self.hook.count_targets:
                    target_tokens += (batch[1] >= 0).sum()
                loss.backward()
                del loss, batch
        except Exception as exc:
            if not is_oom_error(exc):
                raise
            oom = one_line(exc)  # keep the text only: the traceback would pin the activations in memory
        oom_any, stop_any = oom is not None, self.stop_requested()
        if self.ddp:  # the ranks agree (a host sync, under DDP only: a single process decides in Python)
            flags = torch.tensor([float(oom_any), float(stop_any)], device=self.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            oom_any, stop_any = bool(flags[0].item() > 0), bool(flags[1].item() > 0)
        if oom_any or (stop_any and (stop or self.ddp)):
            model.zero_grad(set_to_none=True)
            del loss_sum
            if oom_any:
                raise OutOfMemory(oom if oom is not None else "CUDA out of memory on another rank")
            raise Stopped()

        params = [p for p in model.parameters() if p.grad is not None]
        stats = torch.stack([loss_sum, tokens.float(), target_tokens.float()])
        if self.ddp:
            dist.all_reduce(stats, op=dist.ReduceOp.SUM)
            if self.grad_clip > 0:  # clip the global gradient, exactly as a single process would
                for p in params:
                    dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                    p.grad.div_(self.world_size)
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        lrm = self.lr_multiplier(step)
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * lrm
        if self.muon_momentum is not None:
            momentum = self.muon_momentum(step)
            for opt in self.optimizers:
                if "momentum" in opt.defaults and "betas" not in opt.defaults:
                    for group in opt.param_groups:
                        group["momentum"] = momentum
        self._phase = "optim"
        for opt in self.optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        # the weights now hold step+1 steps while self.step still says `step`: not a state to checkpoint as `step`
        # (the loop moves self.step on and returns to "boundary")
        self._phase = "stepped"
        self._sync()
        dt = time.perf_counter() - t0
        train_loss, tokens, target_tokens = stats.tolist()  # read back after the step: no host sync inside it
        return train_loss / self.world_size, lrm, dt, int(tokens), int(target_tokens)

    def _log_step(self, step, train_loss, lrm, dt, tokens, target_tokens):
        st = self.state
        st.smooth_train_loss = EMA_BETA * st.smooth_train_loss + (1 - EMA_BETA) * train_loss
        debiased = st.smooth_train_loss / (1 - EMA_BETA ** (step + 1))
        if step > 10:
            st.total_training_time += dt
        tok_per_sec = int(tokens / dt) if dt > 0 else 0
        mfu = compute_mfu(self.flops_per_token, tok_per_sec, self.peak_flops, self.world_size) \
            if self.flops_per_token else None
        print0(self.hook.step_line(self, step, {
            "train_loss": train_loss, "debiased": debiased, "lrm": lrm, "dt": dt, "tok_per_sec": tok_per_sec,
            "mfu": mfu, "num_tokens": target_tokens, "total_time": st.total_training_time}))
        metrics = {"step": step, "total_training_flops": self._flops_so_far(step + 1),
                   "total_training_time": st.total_training_time, "train/loss": debiased,
                   "train/raw_loss": train_loss, "train/lrm": lrm, "train/dt": dt,
                   "train/tok_per_sec": tok_per_sec, "train/mfu": mfu if mfu is not None else 0.0}
        self.log_metrics(metrics)
        self.last_train_loss = train_loss
        if self.on_step is not None:
            self.on_step(self, step, dict(metrics, mfu=mfu, num_tokens=target_tokens))

    # ---- the loop --------------------------------------------------------------------------------------------------

    def print_batch_math(self):
        for line in self.hook.batch_lines(self):
            print0(line)

    def setup(self):
        """Resume (if asked), build the train loader, start W&B. Called by run(); idempotent."""
        if self.loader is not None:
            return
        self._check_ckpt_dir_writable()
        if self.master and self.save_checkpoints:  # one trainer per checkpoint directory, for the whole stage
            self._lock = CheckpointLock(self.ckpt_dir, self.init_run_id).acquire()
        loader_state = self._resume()
        self.loader = self.make_train_loader(loader_state)
        self._init_wandb()
        if self.cuda_memory_cap_gib is not None and self.device.type == "cuda":
            total = torch.cuda.get_device_properties(self.device).total_memory
            torch.cuda.set_per_process_memory_fraction(cuda_memory_fraction(self.cuda_memory_cap_gib, total),
                                                       self.device)

    def run(self) -> int:
        """Train to num_iterations. Returns EXIT_OK, EXIT_OOM (after an emergency checkpoint) or EXIT_STOPPED."""
        with StopSignals() as self.signals:
            try:
                outcome = None
                try:
                    self.setup()
                    self.print_batch_math()
                    return self._loop()
                except OutOfMemory as exc:
                    outcome = ("oom", exc.message, True)
                except Stopped:
                    outcome = ("stop", None, True)
                except _DiskFull:
                    raise
                except Exception as exc:
                    if not is_oom_error(exc):
                        raise
                    # weights and optimizer state are intact before the optimizer step ("fwdbwd": the gradient
                    # reduction and clipping after the micro-steps) and between steps; not during or right after it
                    consistent = self._phase in ("boundary", "eval", "fwdbwd") and not self.ddp
                    outcome = ("oom", one_line(exc), consistent)
                # handled outside the except clauses: the failed frames (and their GPU tensors) are released now
                kind, message, consistent = outcome
                if kind == "oom":
                    return self._on_oom(message, consistent=consistent)
                return self._on_stop()
            except _DiskFull as exc:
                return self._on_disk_full(exc.message)
            finally:
                self.wandb_run.finish()
                if self._lock is not None:
                    self._lock.release()

    def _loop(self) -> int:
        step = self.step
        if step > self.num_iterations:  # e.g. num_iterations lowered since: the stage is complete, never loop on
            print0(f"Checkpoint step {step} is past num_iterations={self.num_iterations}: nothing left to train; "
                   f"finishing the stage")
        while True:
            self.step = step
            self._phase = "boundary"
            last = step >= self.num_iterations
            due = last or (self.save_every and step % self.save_every == 0 and step > 0)
            if due and self.last_saved_step != step:
                self.current_val_bpb = None
                self.save(step, reason="final" if last else "periodic")
            if not (step == self.start_step and self.evals_done_at_start):
                self._phase = "eval"
                for evaluate in self.evaluators:
                    evaluate(self, step, last)
                self._phase = "boundary"
                self._mark_evals_done(step)
            if last:
                break
            if not self.ddp and self.stop_requested():  # under DDP the ranks agree inside _train_step
                raise Stopped()
            train_loss, lrm, dt, tokens, target_tokens = self._train_step(step)
            self.step, self._phase = step + 1, "boundary"  # an OOM from here on checkpoints step+1, as it should
            self._log_step(step, train_loss, lrm, dt, tokens, target_tokens)
            self.current_val_bpb = None
            step += 1
        self._print_end()
        return EXIT_OK

    @property
    def peak_memory_mib(self) -> float:
        """Peak allocated CUDA memory of this process in MiB (0 off CUDA), for the end line and the report."""
        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else 0.0

    def _print_end(self):
        print0(f"Peak memory usage: {self.peak_memory_mib:.2f}MiB")
        print0(f"Total training time: {self.state.total_training_time / 60:.2f}m")
        if math.isfinite(self.state.min_val_bpb):
            print0(f"Minimum validation bpb: {self.state.min_val_bpb:.4f}")

    def _free_memory(self):
        self.model.zero_grad(set_to_none=True)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _snapshot_for(self, step):
        if self._snapshot is not None and self._snapshot[0] == step:
            return self._snapshot[1], self._snapshot[2]
        return self._loader_state(), capture_rng(self.device)

    def _on_oom(self, message, consistent):
        """Emergency checkpoint of the last completed step (when memory holds it intact), `OOM:` line, exit 3."""
        self._free_memory()
        step = self.step
        saved = None
        if consistent and self.loader is not None and self.save_checkpoints:
            if self.last_saved_step == step:
                saved = step
            else:
                try:
                    loader_state, rng_state = self._snapshot_for(step)
                    self.save(step, reason="oom", loader_state=loader_state, rng_state=rng_state)
                    saved = step
                except Exception as exc:
                    print(f"emergency checkpoint failed: {' '.join(str(exc).split())[:300]}", file=sys.stderr,
                          flush=True)
        where = f"emergency checkpoint: step {saved:06d}" if saved is not None else "emergency checkpoint: none"
        print0(f"OOM: CUDA out of memory at device_batch_size={self.B}, step {step + 1}; {where}")
        print(f"torch.OutOfMemoryError: {message}", file=sys.stderr, flush=True)
        return EXIT_OOM

    def _on_disk_full(self, message):
        """ENOSPC/EDQUOT while checkpointing: the save removed its own files, older steps stay valid; one line, exit 1."""
        prev = self.last_saved_step
        kept = f"checkpoint step {prev:06d} is intact" if prev is not None else "no earlier checkpoint of this run"
        print0(f"Disk full: {message}; {kept}; free space and resume with --resume_from_step=latest")
        return EXIT_FAILED

    def _on_stop(self):
        """Checkpoint the last completed step (the step in flight was abandoned before touching weights), exit 4."""
        self._free_memory()
        step = self.step
        if self.last_saved_step != step:
            loader_state, rng_state = self._snapshot_for(step)
            self.save(step, reason="stop", loader_state=loader_state, rng_state=rng_state)
        name = self.signals.received if self.signals and self.signals.received else "signal"
        print0(f"Stopped on request ({name}) at step {step}; checkpoint: step {step:06d}")
        return EXIT_STOPPED
