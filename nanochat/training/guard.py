"""Divergence guard: a non-finite loss or gradient norm, or a loss spike, ends the stage before its update is applied.

Checked once per optimizer step, between the backward passes and the optimizer step, on the values of the step's
single device-to-host transfer (loss, token counts, gradient norm). Spike rule: the step loss is above
`rtol` x the median of the last `window` step losses, once `warmup` steps are done and the window is full.
"""
import math
import statistics

import torch

EXIT_DIVERGED = 5              # the stage's exit code after a divergence (docs/CONTRACTS.md "Exit codes")
DEFAULT_SPIKE_RTOL = 2.0       # as Lightning's SpikeDetection
DEFAULT_SPIKE_WINDOW = 20
DEFAULT_SPIKE_WARMUP = 20      # no spike verdict during the first steps of a stage (the loss falls fast there)


class Diverged(Exception):
    """Raised out of a step whose loss or gradient diverged; nothing was applied. `kind`: "nonfinite" | "spike"."""

    def __init__(self, step, kind, detail):
        super().__init__(f"{kind} at step {step}: {detail}")
        self.step, self.kind, self.detail = step, kind, detail


class DivergenceGuard:
    """The verdict for one step from host floats; `recent` is the rolling window (kept in the loop state)."""

    def __init__(self, enabled=True, rtol=DEFAULT_SPIKE_RTOL, window=DEFAULT_SPIKE_WINDOW,
                 warmup=DEFAULT_SPIKE_WARMUP):
        self.enabled = bool(enabled)
        self.rtol = float(rtol)
        self.window = int(window)
        self.warmup = int(warmup)

    @property
    def spikes(self) -> bool:
        return self.enabled and self.rtol > 0 and self.window > 0

    def verdict(self, step, loss, grad_norm, recent):
        """None when the step may be applied, else (kind, one-line detail)."""
        if not self.enabled:
            return None
        if not math.isfinite(loss):
            return "nonfinite", f"loss {loss}"
        if grad_norm is not None and not math.isfinite(grad_norm):
            return "nonfinite", f"gradient norm {grad_norm} (loss {loss:.6f})"
        if self.spikes and step >= self.warmup and len(recent) >= self.window:
            median = statistics.median(recent[-self.window:])
            if median > 0 and loss > self.rtol * median:
                return "spike", (f"loss {loss:.6f} > {self.rtol:g} x median {median:.6f} of the last "
                                 f"{self.window} steps")
        return None

    def remember(self, recent, loss):
        """The window after an applied step (a list of at most `window` floats, oldest first)."""
        if not self.spikes:
            return recent
        return (list(recent) + [float(loss)])[-self.window:]


def divergence_line(step, kind, detail, last_saved_step) -> str:
    """The trailer the supervisor reads: `Divergence: non-finite loss at step 50 (loss nan); update not applied;
    last checkpoint: step 000040` (`none` without a checkpoint)."""
    what = "non-finite loss" if kind == "nonfinite" else "loss spike"
    ck = f"step {last_saved_step:06d}" if last_saved_step is not None else "none"
    return f"Divergence: {what} at step {step} ({detail}); update not applied; last checkpoint: {ck}"


def grad_norm(params, device):
    """The global L2 norm of the gradients, on the device (the divergence guard's check when nothing clips)."""
    if not params:
        return torch.zeros((), dtype=torch.float32, device=device)
    norms = torch._foreach_norm([p.grad for p in params])
    return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))
