"""The TUI's narrow bridge to nanotui.core: log parsing, ETA and checkpoint discovery in the shapes the model wants."""
from __future__ import annotations

from typing import Iterable

from nanotui.core.logparse import LogParser, clean_line  # noqa: F401  (clean_line re-exported)
from nanotui.core.notify import (Notice, notice_for_event, notifications_enabled,  # noqa: F401  (re-exported)
                                 terminal_notification)
from nanotui.core.progress import PipelineProgress
from nanotui.core.runstate import TRAIN_STAGES

STAGE_KINDS = {name: kind for name, (_family, kind) in TRAIN_STAGES.items()}  # "chat_sft" -> "sft"


def new_parser(stage: str | None) -> LogParser:
    return LogParser(kind=STAGE_KINDS.get(stage or ""))


def parse_lines(parser: LogParser, lines: list[str]) -> Iterable:
    """Events of complete lines (the tailer already split them)."""
    if not lines:
        return ()
    return parser.feed("\n".join(lines) + "\n")


class Estimator:
    """Stage and pipeline ETAs (core.progress) fed with parsed events; stage states come from state.json."""

    STATE_MAP = {"waiting": "running", "starting": "running", "stopped": "running", "crashed": "failed"}

    def __init__(self, plan_stages: list[dict]):
        self.names = [s.get("name") for s in plan_stages]
        self.pipeline = PipelineProgress(plan_stages) if plan_stages else None

    def observe(self, stage: str, event, t: float) -> None:
        if self.pipeline is not None and stage in self.pipeline.progress:
            self.pipeline.observe(stage, event, t)

    def restart(self, stage: str, t: float) -> None:
        if self.pipeline is not None and stage in self.pipeline.progress:
            self.pipeline.progress[stage].mark_restart(t)

    def set_states(self, rows: list[dict]) -> None:
        if self.pipeline is None:
            return
        for r in rows:
            name = r.get("name")
            if name in self.pipeline.state:
                state = r.get("state") or "pending"
                self.pipeline.state[name] = self.STATE_MAP.get(state, state if state in
                                                               ("pending", "running", "done", "failed") else "pending")

    def stage_eta(self, stage: str, now: float) -> float | None:
        if self.pipeline is None or stage not in self.pipeline.state:
            return None
        return self.pipeline.stage_estimate(stage, now).eta_s

    def pipeline_eta(self, now: float) -> tuple[float | None, bool]:
        """(seconds known, complete?): incomplete when some unfinished stage has no estimate yet."""
        if self.pipeline is None:
            return None, False
        est = self.pipeline.estimate(now)
        return est.known_s, not est.unknown
