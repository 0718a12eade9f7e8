"""The loop state an exact resume needs besides weights, optimizers, data position and RNG (meta `loop_state`)."""
import math
from dataclasses import asdict, dataclass, field


@dataclass
class LoopState:
    """What, besides weights/optimizers/data position/RNG, an exact resume needs."""
    smooth_train_loss: float = 0.0      # raw EMA of the train loss (debiased when printed)
    min_val_bpb: float = float("inf")
    last_val_bpb: float = None
    total_training_time: float = 0.0    # seconds, steps after the 10th only (as upstream)
    recent_losses: list = field(default_factory=list)  # the divergence guard's window of step losses
    data_steps_skipped: int = 0         # steps of data discarded by --data_skip so far (data step - step)

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
        known = {k: data[k] for k in ("smooth_train_loss", "min_val_bpb", "last_val_bpb", "total_training_time",
                                      "recent_losses", "data_steps_skipped") if k in data}
        return cls(**known)
