"""W&B lines of a stage (run name, id, URL, or why logging is off) and what the run state keeps of them."""
from __future__ import annotations

import re
from typing import Optional

from .events import WandbInfo

_RUN_RE = re.compile(r"W&B run: (\S+) \(id ([^)\s]+)\)")
_URL_RE = re.compile(r"W&B run URL: (https?://\S+)")
_OFF_PREFIX = "W&B logging disabled:"
_VIEW_RE = re.compile(r"wandb:.*View run (?:(\S+) )?at:? (https?://\S+)")   # wandb's own console line


def parse_wandb(s: str) -> Optional[WandbInfo]:
    """One clean log line -> WandbInfo, or None."""
    if s.startswith(_OFF_PREFIX):
        return WandbInfo(error=s[len(_OFF_PREFIX):].strip() or "unknown reason")
    m = _URL_RE.match(s)
    if m:
        return WandbInfo(url=m.group(1))
    m = _RUN_RE.match(s)
    if m:
        return WandbInfo(name=m.group(1), run_id=m.group(2))
    m = _VIEW_RE.match(s)
    if m:
        return WandbInfo(name=m.group(1), url=m.group(2))
    return None


def wandb_update(state_extra: dict, info: WandbInfo, stage: str) -> Optional[tuple]:
    """Fold `info` into the run state's extra keys (`wandb_url`, `wandb_error`). Returns the event to record when
    something new was learnt: ("wandb", fields, message) for a URL, ("wandb_failed", fields, message) for a
    failure; None otherwise (e.g. the same URL printed again by a resumed attempt)."""
    if info.error is not None:
        state_extra.pop("wandb_url", None)
        state_extra["wandb_error"] = info.error
        return ("wandb_failed", {"stage": stage, "error": info.error},
                f"{stage}: W&B logging disabled ({info.error}); training goes on without it")
    if info.url and state_extra.get("wandb_url") != info.url:
        state_extra["wandb_url"] = info.url
        state_extra.pop("wandb_error", None)
        return ("wandb", {"stage": stage, "name": info.name, "url": info.url}, f"{stage}: W&B run {info.url}")
    return None
