"""Fault injection from environment variables, so the failure paths (OOM) run on any machine."""
import os

import torch

from nanochat.common import UsageError

FAULT_OOM_ENV = "NANOCHAT_FAULT_OOM_ABOVE_BS"        # raise torch.OutOfMemoryError in forward when B > K
FAULT_OOM_STEP_ENV = "NANOCHAT_FAULT_OOM_FROM_STEP"  # ... but only from this step on (default 0)


def _env_nonneg_int(name):
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{name}={text!r} must be a non-negative integer")
    if value < 0:
        raise UsageError(f"{name}={text!r} must be a non-negative integer")
    return value


class FaultInjector:
    """NANOCHAT_FAULT_OOM_ABOVE_BS=K: forward passes with more than K rows raise a real torch.OutOfMemoryError
    (from step NANOCHAT_FAULT_OOM_FROM_STEP on, default 0), so the OOM path runs on any machine."""

    def __init__(self):
        self.above_bs = _env_nonneg_int(FAULT_OOM_ENV)
        self.from_step = _env_nonneg_int(FAULT_OOM_STEP_ENV) or 0

    def check(self, batch_rows: int, step: int):
        if self.above_bs is not None and batch_rows > self.above_bs and step >= self.from_step:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate 2.00 GiB (fault injection: {FAULT_OOM_ENV}={self.above_bs}, "
                f"batch of {batch_rows} rows at step {step})")
