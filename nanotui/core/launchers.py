"""What process launchers (torchrun) print around a failed rank: their epilogue never replaces the rank's own error."""
from __future__ import annotations

__all__ = ["wraps_child_error"]

# torchrun's elastic agent re-raises a rank's failure as this, after the rank's own traceback (an OOM included)
_WRAPPERS = ("ChildFailedError",)


def wraps_child_error(exc_type: str) -> bool:
    """True for an exception a launcher raises only to report that a child failed (`torch.distributed.elastic.
    multiprocessing.errors.ChildFailedError`): the child's own error line, printed before it, is the one that counts."""
    return (exc_type or "").rsplit(".", 1)[-1] in _WRAPPERS
