"""Checkpoint discovery on temporary directories: ours (valid/invalid) and upstream's (unverified)."""
import json
import os

from nanotui.core.ckpts import discover, latest_usable, latest_valid, scan_dir


def write_ours(d, step, model_bytes=100, optim_bytes=50, val_bpb=None, corrupt=None):
    d.mkdir(parents=True, exist_ok=True)
    files = {f"model_{step:06d}.pt": model_bytes, f"optim_{step:06d}_rank0.pt": optim_bytes}
    for name, n in files.items():
        (d / name).write_bytes(b"x" * n)
    meta = {"step": step, "val_bpb": val_bpb, "device_batch_size": 8, "max_seq_len": 256,
            "model_config": {"n_layer": 2}, "files": files}
    if corrupt == "size":
        (d / f"optim_{step:06d}_rank0.pt").write_bytes(b"x" * (optim_bytes - 1))
    if corrupt == "missing":
        os.remove(d / f"model_{step:06d}.pt")
    if corrupt == "step":
        meta["step"] = step + 1
    if corrupt == "escape":
        meta["files"]["../evil.pt"] = 1
    (d / f"meta_{step:06d}.json").write_text("{not json" if corrupt == "json" else json.dumps(meta))


def test_our_layout_valid_and_invalid(tmp_path):
    d = tmp_path / "base_checkpoints" / "demo"
    write_ours(d, 25, val_bpb=3.5)
    write_ours(d, 50, val_bpb=3.1)
    write_ours(d, 75, corrupt="size")
    write_ours(d, 100, corrupt="missing")
    write_ours(d, 125, corrupt="json")
    write_ours(d, 150, corrupt="step")
    write_ours(d, 175, corrupt="escape")
    (d / "model_000200.pt").write_bytes(b"partial")          # a save that never committed its meta
    infos = discover(str(tmp_path))
    by_step = {c.step: c for c in infos}
    assert [c.step for c in infos] == [25, 50, 75, 100, 125, 150, 175, 200]
    assert by_step[25].status == "valid" and by_step[25].val_bpb == 3.5 and by_step[25].size_bytes > 150
    assert by_step[25].stage == "base" and by_step[25].tag == "demo" and by_step[25].path == str(d)
    assert by_step[25].device_bs == 8 and by_step[25].max_seq_len == 256
    assert by_step[75].status == "invalid" and "49 bytes, meta says 50" in by_step[75].reason
    assert by_step[100].status == "invalid" and "missing" in by_step[100].reason
    assert by_step[125].status == "invalid" and "unreadable" in by_step[125].reason
    assert by_step[150].status == "invalid" and "says step 151" in by_step[150].reason
    assert by_step[175].status == "invalid" and "invalid file name" in by_step[175].reason
    assert by_step[200].status == "invalid" and "no meta_000200.json" in by_step[200].reason
    assert latest_valid(infos).step == 50
    assert latest_valid(infos, stage="mid") is None
    assert all(c.to_dict()["status"] in ("valid", "invalid") for c in infos)


def test_upstream_layout_is_unverified(tmp_path):
    d = tmp_path / "mid_checkpoints" / "d20"
    d.mkdir(parents=True)
    (d / "model_000809.pt").write_bytes(b"w" * 1000)
    (d / "optim_000809_rank0.pt").write_bytes(b"o" * 10)
    (d / "meta_000809.json").write_text(json.dumps({
        "step": 809, "val_bpb": 0.41, "model_config": {"n_layer": 20}, "user_config": {},
        "device_batch_size": 32, "max_seq_len": 2048}))
    (d / "meta_000900.json").write_text(json.dumps({"step": 900}))   # upstream meta without its model
    infos = discover(str(tmp_path))
    assert [(c.stage, c.step, c.status) for c in infos] == [("mid", 809, "unverified"), ("mid", 900, "invalid")]
    assert infos[0].val_bpb == 0.41 and infos[0].size_bytes == 1000 + 10 + len((d / "meta_000809.json").read_bytes())
    assert "upstream" in infos[0].reason
    assert latest_valid(infos) is None and latest_usable(infos).step == 809


def test_stage_and_tag_filters_and_missing_dirs(tmp_path):
    write_ours(tmp_path / "base_checkpoints" / "d20", 10)
    write_ours(tmp_path / "chatsft_checkpoints" / "d20", 5)
    write_ours(tmp_path / "base_checkpoints" / "demo", 7)
    assert [(c.stage, c.tag, c.step) for c in discover(str(tmp_path))] == [
        ("base", "d20", 10), ("base", "demo", 7), ("chatsft", "d20", 5)]
    assert [c.step for c in discover(str(tmp_path), stages=("chatsft",))] == [5]
    assert [c.step for c in discover(str(tmp_path), tag="demo")] == [7]
    assert discover(str(tmp_path / "nowhere")) == []
    assert scan_dir(str(tmp_path / "nowhere")) == []


def test_listing_tolerates_files_deleted_by_retention_meanwhile(tmp_path, monkeypatch):
    """Retention may delete a step between listdir and stat/open: the listing goes on without that step."""
    import nanotui.core.ckpts as ck
    d = tmp_path / "base_checkpoints" / "d20"
    d.mkdir(parents=True)
    (d / "model_000010.pt").write_bytes(b"m" * 10)
    (d / "meta_000010.json").write_text(json.dumps({"step": 10, "files": {"model_000010.pt": 10}}))
    real = os.listdir
    # as seen just before retention removed steps 5 (model only, save unfinished) and 7 (model + meta)
    monkeypatch.setattr(ck.os, "listdir", lambda p: real(p) + ["model_000005.pt", "model_000007.pt",
                                                              "meta_000007.json"])
    infos = ck.scan_dir(str(d), "base", "d20")
    assert [c.step for c in infos if c.status == "valid"] == [10]
    assert 7 not in [c.step for c in infos]
