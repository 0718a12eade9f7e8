"""Device-batch probes of a run: gather a stage's probe lines into one record, and hand a probed batch size to a
later stage of the same shape (`--device_batch_size=auto` then skips its own probe)."""
from __future__ import annotations

import os
from typing import Optional

from nanotui.core.events import BatchChoice, BatchProbe
from nanotui.core.plan import argv_with, flag_value
from nanotui.core.vram import gpu_spec, shape_key
from nanotui.core.vramplan import plan_vram

AUTO = "auto"
MAX_ENV = "NANOCHAT_AUTO_BS_MAX"   # nanochat/batch_probe.py: the largest candidate it tries


def stage_shape_key(stage: dict) -> str:
    """Same key = same memory per device batch: model tag, sequence length, ranks, and the batch kind (SFT pads
    conversations of any length and trains eagerly, so it never shares a probe with base/mid)."""
    kind = "sft" if stage.get("log_kind") == "sft" else "tokens"
    return shape_key(stage.get("model_tag"), stage.get("seq_len"), int(stage.get("world_size") or 1), kind)


def is_auto(argv) -> bool:
    value = flag_value(list(argv), "device_batch_size")
    return value is not None and value.strip().lower() == AUTO


class ProbeRecorder:
    """Feed a stage attempt's parsed events; `observe` returns the finished record at the `Device batch size auto`
    line: {stage, key, device_bs, eval_bs, headroom, limit_gib, capacity_gib, detail, rows: [{device_bs, peak_gib,
    reserved_gib, outcome}]}."""

    def __init__(self, stage: dict):
        self.stage = stage
        self.rows: list = []
        self.eval_bs: Optional[int] = None
        self.eval_detail: Optional[str] = None

    def observe(self, ev) -> Optional[dict]:
        if isinstance(ev, BatchProbe):
            self.rows.append({"device_bs": ev.device_bs, "peak_gib": ev.peak_gib, "reserved_gib": ev.reserved_gib,
                              "limit_gib": ev.limit_gib, "outcome": ev.outcome})
            return None
        if not isinstance(ev, BatchChoice):
            return None
        if ev.kind == "eval":
            self.eval_bs, self.eval_detail = ev.device_bs, ev.detail
            return None
        record = {"stage": self.stage.get("name"), "key": stage_shape_key(self.stage), "device_bs": ev.device_bs,
                  "eval_bs": self.eval_bs if self.eval_detail is not None else ev.device_bs,
                  "eval_detail": self.eval_detail, "headroom": ev.headroom, "limit_gib": ev.limit_gib,
                  "capacity_gib": ev.capacity_gib, "detail": ev.detail, "rows": list(self.rows)}
        self.rows, self.eval_bs, self.eval_detail = [], None, None
        return record


def record_probe(probes: list, record: dict) -> list:
    """The run's probe records (state.json `probes`) with `record` as the newest of its stage."""
    return [p for p in probes or [] if p.get("stage") != record.get("stage")] + [record]


def reuse(stage: dict, argv: list, device_bs, probes) -> tuple:
    """(argv, device_bs, record reused or None): a stage asking for `auto` gets the batch probed by an earlier
    stage of the same shape key, when that batch divides this stage's per-rank total."""
    if not stage.get("trains") or not is_auto(argv):
        return argv, device_bs, None
    key = stage_shape_key(stage)
    for rec in reversed(probes or []):
        b = rec.get("device_bs")
        if rec.get("key") != key or not isinstance(b, int) or b < 1 or rec.get("stage") == stage.get("name"):
            continue
        total, seq, world = stage.get("total_batch_size"), stage.get("seq_len"), int(stage.get("world_size") or 1)
        if total and seq and total % (b * seq * world):
            continue
        return argv_with({"argv": argv}, device_bs=b), b, rec
    return argv, device_bs, None


def probe_env(stage: dict, argv: list, plan: dict, gpu_sample: Optional[dict]) -> dict:
    """Env for an `auto` attempt: start the probe at twice the predictor's choice for the card in use (each
    candidate costs a compile), unless the user set NANOCHAT_AUTO_BS_MAX or no card is known."""
    if not stage.get("trains") or not is_auto(argv) or os.environ.get(MAX_ENV):
        return {}
    gpus = (gpu_sample or {}).get("gpus") or []
    if not gpus or not gpus[0].get("mem_total"):
        return {}
    g = gpus[0]
    try:
        card = gpu_spec(g.get("name") or "GPU", capacity_gib=g["mem_total"] / 2**30)
        sv = next((t for t in plan_vram(plan, card) if t.stage == stage.get("name")), None)
    except (ValueError, TypeError, KeyError):
        return {}
    if sv is None or sv.chosen is None:
        return {}
    return {MAX_ENV: str(2 * sv.chosen)}


def last_gpu_sample(rd) -> Optional[dict]:
    """The newest gpu.jsonl sample of a RunDir, None when there is none or it cannot be read."""
    try:
        samples = rd.read_gpu(tail=1)
    except (OSError, ValueError):
        return None
    return samples[-1] if samples else None
