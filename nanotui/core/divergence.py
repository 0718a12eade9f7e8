"""Divergence rollback arithmetic, pure: which checkpoint to roll back to, and the data skip list it adds.

A training stage that diverged (trainer exit 5, `Divergence: ... at step O ...`) restarts from the newest committed
checkpoint C < O of this run (none: from the start, C = 0) and, when step C starts, discards the data of steps
C .. O + margin. The skip list maps a step to the steps of data discarded when it starts; it is passed to the
trainer as `--data_skip=C:N[,...]` on every later attempt of the stage (docs/CONTRACTS.md "Divergence").
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional

__all__ = ["DEFAULT_MAX_ROLLBACKS", "DEFAULT_SKIP_MARGIN", "rollback_target", "skips_after_rollback",
           "format_skips", "parse_skips", "skips_from_json", "format_rollbacks"]

DEFAULT_MAX_ROLLBACKS = 3     # per stage; then the run stops and notifies
DEFAULT_SKIP_MARGIN = 10      # steps of data skipped past the onset


def rollback_target(ckpt_steps: Iterable[int], onset: int) -> Optional[int]:
    """The newest checkpoint step strictly before the onset, None when there is none (restart from the start)."""
    before = [s for s in ckpt_steps if s < onset]
    return max(before) if before else None


def skips_after_rollback(skips: Mapping[int, int], target: Optional[int], onset: int, margin: int) -> dict:
    """The skip list after rolling back to `target` for a divergence at `onset`: entries after the target belong
    to the abandoned steps and go; the target's entry grows by the steps C .. onset + margin (counted in the data
    stream as it is after the target's earlier skip, so a repeated rollback to the same step adds up)."""
    start = target if target is not None else 0
    out = {int(s): int(n) for s, n in skips.items() if int(s) <= start}
    out[start] = out.get(start, 0) + max(1, onset + max(0, margin) - start + 1)
    return out


def format_skips(skips: Mapping[int, int]) -> str:
    """{40: 21} -> "40:21" (the trainer's --data_skip value)."""
    return ",".join(f"{int(s)}:{int(n)}" for s, n in sorted(skips.items(), key=lambda kv: int(kv[0])))


def parse_skips(text) -> dict:
    """"40:21,60:3" (a stage's own --data_skip) -> {40: 21, 60: 3}; malformed parts are dropped (the trainer
    refuses them itself)."""
    out = {}
    for part in str(text or "").replace(" ", "").split(","):
        step, _, count = part.partition(":")
        if step.isdigit() and count.isdigit() and int(count) > 0:
            out[int(step)] = out.get(int(step), 0) + int(count)
    return out


def skips_from_json(obj) -> dict:
    """state.json's {"40": 21} -> {40: 21}; anything malformed is dropped."""
    out = {}
    for s, n in (obj or {}).items() if isinstance(obj, Mapping) else ():
        try:
            step, count = int(s), n
        except (TypeError, ValueError):
            continue
        if isinstance(count, int) and not isinstance(count, bool) and count > 0 and step >= 0:
            out[step] = count
    return out


def format_rollbacks(rollbacks) -> list:
    """`nanotui status` lines, one per rollback: `rollback 1 base_train: non-finite loss at step 50 -> checkpoint
    step 40, data skipped 40:21`."""
    lines = []
    for i, r in enumerate(rollbacks or (), 1):
        if not isinstance(r, Mapping):
            continue
        what = {"nonfinite": "non-finite loss", "spike": "loss spike"}.get(r.get("kind"), "divergence")
        back = f"checkpoint step {r['from_step']}" if r.get("from_step") is not None else "the start"
        lines.append(f"rollback {i} {r.get('stage') or '?'}: {what} at step {r.get('onset')} -> {back}, data "
                     f"skipped {r.get('skips') or '-'}")
    return lines
