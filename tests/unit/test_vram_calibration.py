"""The VRAM predictor against published upstream peaks: docs/VRAM_CALIBRATION.md's table is recomputed from the
predictor (so the document cannot drift from the code), every ratio stays within ±15 %, and `nanotui plan` takes
--depth/--vocab-size and reports allocated_gib beside the reserved total."""
import json
import re
from pathlib import Path

import pytest

from nanotui import cli
from nanotui.core.vram import Assumptions, ModelShape, gpu_spec, plan_stage
from nanotui.core.vram_calibration import PUBLISHED, TOLERANCE, format_table, table_rows

DOC = Path(__file__).resolve().parents[2] / "docs" / "VRAM_CALIBRATION.md"


def _doc_rows() -> list:
    return [line for line in DOC.read_text().splitlines() if line.startswith("|")]


def test_document_table_is_the_predictor_output():
    """Every row of the sourced table (config, GPU, measured, predicted, ratio) is what the code computes now."""
    assert _doc_rows() == format_table()
    for p in PUBLISHED:  # each source is cited in the document
        assert p.source.split(" ")[0] in DOC.read_text()


def test_every_published_point_within_tolerance():
    rows = table_rows()
    assert len([p for p, _, _ in rows if p.kind == "allocated"]) >= 3
    for p, predicted, ratio in rows:
        assert 1 - TOLERANCE <= ratio <= 1 + TOLERANCE, (p.label, round(predicted), p.measured_mib, ratio)


def test_the_old_terms_would_fail_the_table():
    """The refit is what brings the points in: the pre-calibration terms (an fp32-sized logits copy, compile factor
    0.75) leave some published point outside ±15 %."""
    old = Assumptions(logit_bytes_train_compiled=4.0, compile_act_factor=0.75)
    assert any(not 1 - TOLERANCE <= r <= 1 + TOLERANCE for _, _, r in table_rows(old))


def test_run1000_facts_still_hold():
    """d32 on 80 GB: B=8 fits, B=16 runs out of memory (upstream run1000.sh)."""
    d32 = plan_stage("base_train", ModelShape(32, 65536, 2048), 524288, gpu_spec("h100"), world_size=8, headroom=0.0)
    assert d32.row(8).fits and not d32.row(16).fits


def _plan_json(capsys, *args) -> dict:
    assert cli.main(["plan", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_takes_depth_and_vocab_and_reports_allocated(capsys):
    """Any published configuration can be checked: the d8 8xH100 row of the table through the CLI."""
    d8 = _plan_json(capsys, "--profile", "8xh100", "--gpu", "h100", "--depth", "8")
    base = d8["stages"][0]
    assert base["stage"] == "base_train" and base["model"] == "d8"
    row = next(r for r in base["rows"] if r["device_bs"] == 32)
    point = next(p for p in PUBLISHED if p.depth == 8)
    assert row["allocated_gib"] == pytest.approx(point.measured_mib / 1024, rel=TOLERANCE)
    assert row["allocated_gib"] < row["train_gib"]          # reserved total = allocated + slack + CUDA context
    v = _plan_json(capsys, "--profile", "8xh100", "--gpu", "h100", "--depth", "8", "--vocab-size", "32768")
    assert v["stages"][0]["vocab_size"] == 32768
    assert next(r for r in v["stages"][0]["rows"] if r["device_bs"] == 32)["allocated_gib"] < row["allocated_gib"]


@pytest.mark.parametrize("flag,value", [("--depth", "x"), ("--depth", "0"), ("--vocab-size", "-5")])
def test_plan_rejects_bad_depth_or_vocab(capsys, flag, value):
    assert cli.main(["plan", "--profile", "4090", flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(r"must be a positive integer", err[0]) and "Traceback" not in err[0]
