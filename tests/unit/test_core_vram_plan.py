"""Issue 12 outside the predictor: probe log lines, DEVICE_BS=auto plans, the per-stage VRAM plan, the supervisor's
probe records and their reuse, `nanotui status` lines, `nanotui plan` (in process: main(argv))."""
import json

import pytest

from nanotui import cli
from nanotui.core.events import BatchChoice, BatchProbe
from nanotui.core.logparse import LogParser, parse_line
from nanotui.core.plan import PlanError, argv_with, build_plan
from nanotui.core.vram import gpu_spec
from nanotui.core.vramplan import expected_peak, format_probes, plan_vram, stage_shapes
from nanotui.runtime import probes

PROBE_LOG = """Device batch probe: device_batch_size=32 peak=n/a reserved=n/a limit=21.59GiB -> OOM
Device batch probe: device_batch_size=16 peak=25.10GiB reserved=26.00GiB limit=21.59GiB -> too big
Device batch probe: device_batch_size=8 peak=14.20GiB reserved=15.00GiB limit=21.59GiB -> fits
Eval batch size auto: 4 (validation at device_batch_size=8 needs 23.10GiB)
Device batch size auto: 8 (headroom 10%, limit 21.59GiB of 23.99GiB, measured on cuda)
Tokens / micro-batch / rank: 8 x 1024 = 8,192
"""


def test_probe_lines_parse():
    assert parse_line("Device batch probe: device_batch_size=16 peak=25.10GiB reserved=26.00GiB "
                      "limit=21.59GiB -> too big") == BatchProbe(16, 25.1, 26.0, 21.59, "too big")
    assert parse_line("Device batch probe: device_batch_size=2 peak=512.00MiB reserved=n/a limit=1.00GiB -> fits") \
        == BatchProbe(2, 0.5, None, 1.0, "fits")
    c = parse_line("Device batch size auto: 8 (headroom 10%, limit 21.59GiB of 23.99GiB, measured on cuda)")
    assert (c.kind, c.device_bs, c.headroom, c.limit_gib, c.capacity_gib) == ("train", 8, 0.1, 21.59, 23.99)
    none = parse_line("Device batch size auto: none fits (headroom 10%, limit 0.90MiB of 1.00MiB, measured on cpu)")
    assert none.device_bs is None and none.limit_gib == pytest.approx(0.9 / 1024)
    assert parse_line("Eval batch size auto: 4 (validation at device_batch_size=8 needs 23.10GiB)") == \
        BatchChoice("eval", 4, detail="validation at device_batch_size=8 needs 23.10GiB")
    assert parse_line("Device batch size: 4") is not None  # upstream's SFT line keeps its meaning


def test_parser_tracks_the_probed_batch():
    p = LogParser(kind="base")
    evs = p.feed(PROBE_LOG.splitlines()[0] + "\n" + PROBE_LOG.splitlines()[4] + "\n")
    assert [type(e) for e in evs] == [BatchProbe, BatchChoice] and p.device_bs == 8


def test_device_bs_auto_in_plans():
    plan = build_plan("4090", {"DEVICE_BS": "auto"})
    trains = [s for s in plan.stages if s.trains]
    assert [s.device_bs for s in trains] == [None, None, None]
    assert all("--device_batch_size=auto" in s.argv for s in trains)
    assert build_plan("4090", {"DEVICE_BS": "AUTO", "SFT_BS": "2"}).stage("chat_sft").device_bs == 2
    assert build_plan("4090", {"SFT_BS": "auto"}).stage("base_train").device_bs == 4
    with pytest.raises(PlanError, match=r"positive integer, got .many. \(or auto"):
        build_plan("4090", {"DEVICE_BS": "many"})
    with pytest.raises(PlanError, match="must be a positive integer, got"):
        build_plan("4090", {"SEQ_LEN": "auto"})
    # the OOM fallback replaces auto with a number
    assert "--device_batch_size=2" in argv_with(plan.stage("base_train"), device_bs=2)


def test_stage_shapes_follow_the_plan():
    shapes = {s["name"]: (shape, total, seqs, compiled)
              for s, shape, total, seqs, compiled in stage_shapes(build_plan("cpu-demo").to_dict())}
    shape, total, seqs, compiled = shapes["base_train"]
    assert (shape.depth, shape.vocab_size, shape.seq_len, total, seqs, compiled) == (2, 4096, 256, 8192, False, True)
    shape, total, seqs, compiled = shapes["chat_sft"]
    assert (shape.depth, shape.seq_len, total, seqs, compiled) == (2, 2048, 32, True, False)
    tables = plan_vram(build_plan("8xh100").to_dict(), gpu_spec("h100"))
    assert [t.stage for t in tables] == ["base_train", "mid_train", "chat_sft"]
    assert tables[0].world_size == 8 and [r.device_bs for r in tables[2].rows] == [4, 2, 1]  # 32 examples / 8 ranks


def test_expected_peak_for_the_panel():
    plan = build_plan("4090").to_dict()
    sv = plan_vram(plan, gpu_spec("4090"))[0]
    assert expected_peak(plan, "base_train", 4, "NVIDIA GeForce RTX 4090", 24564 * 2**20) == \
        pytest.approx(sv.row(4).train_gib, rel=1e-6)
    assert expected_peak(plan, "base_train", 64) > sv.row(32).train_gib    # outside the table: computed
    assert expected_peak(plan, "report", 4) is None and expected_peak(plan, "base_train", None) is None
    assert expected_peak(build_plan("cpu-demo").to_dict(), "base_train", 8) is None   # no card to name


def _stage(name="base_train", kind="base", seq=1024, total=524288):
    return {"name": name, "trains": True, "log_kind": kind, "model_tag": "d20", "seq_len": seq, "world_size": 1,
            "total_batch_size": total, "argv": ["python", "-m", f"x.{name}", "--device_batch_size=auto"]}


def test_recorder_builds_one_record_and_reuse_matches_shapes():
    rec = probes.ProbeRecorder(_stage())
    p = LogParser(kind="base")
    records = [r for ev in p.feed(PROBE_LOG) for r in [rec.observe(ev)] if r]
    assert len(records) == 1
    r = records[0]
    assert (r["device_bs"], r["eval_bs"], r["headroom"], r["key"]) == (8, 4, 0.1, "d20/T1024/W1/tokens")
    assert [row["outcome"] for row in r["rows"]] == ["OOM", "too big", "fits"]
    state = {"probes": probes.record_probe([], r)}
    state["probes"] = probes.record_probe(state["probes"], dict(r, device_bs=4))  # a newer probe replaces it
    assert [p["device_bs"] for p in state["probes"]] == [4]
    mid = _stage("mid_train")
    argv, bs, used = probes.reuse(mid, list(mid["argv"]), None, state["probes"])
    assert bs == 4 and "--device_batch_size=4" in argv and used["stage"] == "base_train"
    sft = _stage("chat_sft", kind="sft", seq=None, total=None)
    assert probes.reuse(sft, list(sft["argv"]), None, state["probes"])[2] is None          # other shape: probes
    longer = _stage("mid_train", seq=2048)
    assert probes.reuse(longer, list(longer["argv"]), None, state["probes"])[2] is None
    fixed = dict(mid, argv=["python", "-m", "x", "--device_batch_size=2"])
    assert probes.reuse(fixed, list(fixed["argv"]), 2, state["probes"]) == (fixed["argv"], 2, None)
    odd = _stage("mid_train", total=3 * 1024)                                               # 4 does not divide
    assert probes.reuse(odd, list(odd["argv"]), None, state["probes"])[2] is None


def test_status_lines():
    lines = format_probes([{"stage": "base_train", "device_bs": 8, "eval_bs": 4, "headroom": 0.1,
                            "limit_gib": 21.59, "capacity_gib": 23.99,
                            "rows": [{"device_bs": 16, "outcome": "OOM", "reserved_gib": None},
                                     {"device_bs": 8, "outcome": "fits", "reserved_gib": 15.0}]}])
    assert lines == ["probe base_train: device_batch_size auto -> 8, eval batch 4 (headroom 10%, limit 21.59 GiB "
                     "of 23.99 GiB)", "  B=16 OOM | B=8 fits 15.00 GiB"]


def test_nanotui_plan_command(capsys, monkeypatch):
    monkeypatch.delenv("DEVICE_BS", raising=False)
    monkeypatch.delenv("SEQ_LEN", raising=False)
    assert cli.main(["plan", "--profile", "4090", "--gpu", "4090"]) == 0
    out = capsys.readouterr().out
    assert "VRAM plan for profile 4090 on RTX 4090" in out
    d20 = plan_vram(build_plan("4090").to_dict(), gpu_spec("4090"))[0]
    assert f"*         {d20.chosen}  " in out and "base_train: d20" in out and "chat_sft: d20" in out
    assert cli.main(["plan", "--profile", "4090", "--gpu", "4090", "--seq-len", "2048", "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["stages"][0]["seq_len"] == 2048 and js["stages"][0]["chosen"] == 4


@pytest.mark.parametrize("args,words", [
    (["plan", "--profile", "4090", "--gpu", "voodoo"], ["unknown GPU", "voodoo"]),
    (["plan", "--profile", "4090", "--headroom", "1.5"], ["headroom"]),
    (["plan", "--profile", "4090", "--headroom", "lots"], ["lots"]),
    (["plan", "--profile", "nope"], ["unknown profile"]),
    (["plan", "--profile", "4090", "--device-bs", "x"], ["DEVICE_BS"]),
])
def test_nanotui_plan_bad_input_is_one_line(args, words, capsys):
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and all(w in err[0] for w in words)


def test_probe_env_starts_the_probe_near_the_prediction(monkeypatch):
    monkeypatch.delenv(probes.MAX_ENV, raising=False)
    plan = build_plan("4090", {"DEVICE_BS": "auto"}).to_dict()
    stage = next(s for s in plan["stages"] if s["name"] == "base_train")
    sample = {"gpus": [{"name": "NVIDIA GeForce RTX 4090", "mem_total": 24564 * 2**20}]}
    chosen = plan_vram(plan, gpu_spec("4090"))[0].chosen
    assert probes.probe_env(stage, stage["argv"], plan, sample) == {probes.MAX_ENV: str(2 * chosen)}
    assert probes.probe_env(stage, stage["argv"], plan, {"gpus": []}) == {}          # no card: the stage's own cap
    assert probes.probe_env(stage, argv_with(stage, device_bs=4), plan, sample) == {}  # not auto
    monkeypatch.setenv(probes.MAX_ENV, "4")
    assert probes.probe_env(stage, stage["argv"], plan, sample) == {}                 # the user's value stays
