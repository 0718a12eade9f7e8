"""Checkpoint files: atomic commit via meta, validation, discovery of the newest valid step, retention, safe loading."""
import json
import os

import pytest
import torch

from nanochat import checkpoint as ck


def _model_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(8, 4, generator=g), "b": torch.randn(4, generator=g)}


def _optim_state():
    return [{"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2)}},
             "param_groups": [{"lr": 0.1, "params": [0]}]}]


def _save(d, step, val_bpb=None, keep_last=0, **meta):
    meta = dict(meta)
    if val_bpb is not None:
        meta["val_bpb"] = val_bpb
    return ck.save_checkpoint(str(d), step, _model_state(step), _optim_state(), meta, keep_last=keep_last, quiet=True)


def test_save_writes_upstream_names_and_meta_lists_sizes(tmp_path, capsys):
    meta = ck.save_checkpoint(str(tmp_path), 500, _model_state(), _optim_state(), {"x": 1}, keep_last=3)
    names = sorted(os.listdir(tmp_path))
    assert names == ["meta_000500.json", "model_000500.pt", "optim_000500_rank0.pt"]
    on_disk = json.loads((tmp_path / "meta_000500.json").read_text())
    assert on_disk == meta
    assert on_disk["step"] == 500 and on_disk["x"] == 1
    assert on_disk["files"] == {n: os.path.getsize(tmp_path / n) for n in names if n.endswith(".pt")}
    assert capsys.readouterr().out.strip() == f"Checkpoint saved: step 000500 -> {tmp_path}"


def test_load_roundtrip_uses_plain_tensors(tmp_path):
    _save(tmp_path, 7)
    model_state, optim_states, meta = ck.load_checkpoint(str(tmp_path), 7, "cpu")
    assert torch.equal(model_state["w"], _model_state(7)["w"])
    assert optim_states[0]["param_groups"][0]["lr"] == 0.1
    assert meta["step"] == 7
    _, none_optim, _ = ck.load_checkpoint(str(tmp_path), 7, "cpu", load_optim=False)
    assert none_optim is None


def test_uncommitted_step_without_meta_is_invisible(tmp_path):
    _save(tmp_path, 10)
    # a save killed before its meta: model/optim files exist but no meta
    torch.save(_model_state(), tmp_path / "model_000020.pt")
    (tmp_path / ".meta_000020.json.tmp.999999").write_text("{")
    assert ck.list_valid_steps(str(tmp_path)) == [10]
    assert ck.find_latest_step(str(tmp_path)) == 10


def test_truncated_model_file_is_skipped_with_message(tmp_path, capsys):
    _save(tmp_path, 10)
    _save(tmp_path, 20)
    path = tmp_path / "model_000020.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert ck.find_latest_step(str(tmp_path)) == 10
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"skipping checkpoint step 20 in {tmp_path}: model_000020.pt has ")
    with pytest.raises(ck.CheckpointError):
        ck.load_checkpoint(str(tmp_path), 20, "cpu")


def test_garbage_meta_is_skipped_and_never_loaded(tmp_path, capsys):
    _save(tmp_path, 10)
    _save(tmp_path, 20)
    (tmp_path / "meta_000020.json").write_bytes(b"\x00\xffnot json at all")
    assert ck.find_latest_step(str(tmp_path)) == 10
    assert "skipping checkpoint step 20" in capsys.readouterr().err
    with pytest.raises(ck.CheckpointError, match="does not parse"):
        ck.load_checkpoint(str(tmp_path), 20, "cpu")


def test_missing_optimizer_file_invalidates_step(tmp_path):
    _save(tmp_path, 5)
    os.unlink(tmp_path / "optim_000005_rank0.pt")
    with pytest.raises(ck.CheckpointError, match="optim_000005_rank0.pt is missing"):
        ck.validate_step(str(tmp_path), 5)
    assert ck.find_latest_step(str(tmp_path)) is None


class ArbitraryObject:
    """Something that is not a tensor or plain container: weights_only loading must refuse it."""


def test_pickled_object_is_refused(tmp_path):
    _save(tmp_path, 3)
    path = tmp_path / "model_000003.pt"
    torch.save({"w": ArbitraryObject()}, path)
    meta = json.loads((tmp_path / "meta_000003.json").read_text())
    meta["files"]["model_000003.pt"] = os.path.getsize(path)
    (tmp_path / "meta_000003.json").write_text(json.dumps(meta))
    with pytest.raises(ck.CheckpointError, match="cannot be loaded safely"):
        ck.load_checkpoint(str(tmp_path), 3, "cpu")


def test_retention_keeps_last_k_plus_best(tmp_path):
    bpbs = {100: 1.5, 200: 0.9, 300: 1.2, 400: 1.1, 500: 1.3, 600: 1.4}
    for step, bpb in bpbs.items():
        _save(tmp_path, step, val_bpb=bpb, keep_last=3)
    assert ck.list_valid_steps(str(tmp_path)) == [200, 400, 500, 600]
    left = {n for n in os.listdir(tmp_path)}
    assert not any(n.endswith(("000100.pt", "000300.pt", "000100.json", "000300.json")) for n in left)
    assert "optim_000300_rank0.pt" not in left


def test_retention_removes_stale_tmp_and_orphans_but_not_invalid_steps(tmp_path):
    _save(tmp_path, 1)
    (tmp_path / ".model_000002.pt.tmp.999999").write_bytes(b"partial")   # dead writer
    torch.save(_model_state(), tmp_path / "model_000002.pt")              # orphan, older than the next save
    (tmp_path / "meta_000000.json").write_text("garbage")                   # invalid committed step: kept
    _save(tmp_path, 3, keep_last=5)
    names = set(os.listdir(tmp_path))
    assert ".model_000002.pt.tmp.999999" not in names
    assert "model_000002.pt" not in names
    assert "meta_000000.json" in names
    assert ck.list_valid_steps(str(tmp_path)) == [1, 3]


def test_update_meta_is_atomic_merge(tmp_path):
    _save(tmp_path, 4)
    ck.update_meta(str(tmp_path), 4, {"val_bpb": 1.25})
    assert ck.validate_step(str(tmp_path), 4)["val_bpb"] == 1.25
    assert not [n for n in os.listdir(tmp_path) if ".tmp." in n]


def test_resolve_resume_step(tmp_path, capsys):
    from nanochat.common import UsageError
    assert ck.resolve_resume_step(str(tmp_path), None) is None
    assert ck.resolve_resume_step(str(tmp_path), "latest") is None
    _save(tmp_path, 5)
    _save(tmp_path, 9)
    assert ck.resolve_resume_step(str(tmp_path), "latest") == 9
    assert ck.resolve_resume_step(str(tmp_path), "5") == 5
    with pytest.raises(UsageError, match=r"cannot resume from step 7 .*valid steps: 5, 9"):
        ck.resolve_resume_step(str(tmp_path), "7")


def test_upstream_meta_without_file_list_is_accepted(tmp_path):
    torch.save(_model_state(), tmp_path / "model_000030.pt")
    (tmp_path / "meta_000030.json").write_text(json.dumps({"step": 30, "val_bpb": 2.9}))
    assert ck.find_latest_step(str(tmp_path)) == 30


def test_checkpoint_dir_layout(base_dir):
    assert ck.checkpoint_dir("base", "d4") == str(base_dir / "base_checkpoints" / "d4")
    assert ck.checkpoint_dir("mid", "x") == str(base_dir / "mid_checkpoints" / "x")
    assert ck.checkpoint_dir("sft", "x") == str(base_dir / "chatsft_checkpoints" / "x")


# ---------------------------------------------------------------------------------------------------------------------
# re-saving a step, and a full disk

def test_resave_crash_between_writes_never_leaves_a_mixed_step_valid(tmp_path):
    """Re-saving step 20 (same shapes, so the same file sizes): a crash after the new model file and before the new
    optimizer file must leave step 20 uncommitted, not new weights + old optimizer state under the old meta."""
    _save(tmp_path, 10)
    _save(tmp_path, 20)
    old_sizes = ck.validate_step(str(tmp_path), 20)["files"]
    new_model = _model_state(99)
    pid = os.fork()
    if pid == 0:  # the child re-saves step 20 and "crashes" (os._exit: no cleanup at all) before the optimizer file
        try:
            real = ck._write_torch_atomic

            def crash_on_optim(path, obj):
                if os.path.basename(path).startswith("optim_"):
                    os._exit(9)
                return real(path, obj)
            ck._write_torch_atomic = crash_on_optim
            ck.save_checkpoint(str(tmp_path), 20, new_model, _optim_state(), {}, keep_last=0, quiet=True)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 9
    on_disk = torch.load(tmp_path / "model_000020.pt", weights_only=True)
    assert torch.equal(on_disk["w"], new_model["w"])                               # the new weights are there...
    assert os.path.getsize(tmp_path / "model_000020.pt") == old_sizes["model_000020.pt"]  # ...with the old size
    with pytest.raises(ck.CheckpointError, match="missing"):
        ck.validate_step(str(tmp_path), 20)                                          # ...but step 20 is not valid
    assert ck.find_latest_step(str(tmp_path)) == 10


def _fail_writes(monkeypatch, predicate, errno_=28):
    """Writes of files whose name matches `predicate` write a few bytes, then fail like a full disk."""
    real = ck._atomic_write

    def atomic_write(path, write_fn):
        if predicate(os.path.basename(path)):
            def failing(f):
                f.write(b"partial")
                raise OSError(errno_, os.strerror(errno_))
            return real(path, failing)
        return real(path, write_fn)
    monkeypatch.setattr(ck, "_atomic_write", atomic_write)


@pytest.mark.parametrize("victim", ["optim_", "meta_"])
def test_disk_full_during_save_keeps_previous_step_and_leaves_no_files(tmp_path, monkeypatch, victim):
    _save(tmp_path, 10)
    before = sorted(os.listdir(tmp_path))
    _fail_writes(monkeypatch, lambda name: name.startswith(victim) and "000020" in name)
    with pytest.raises(OSError) as exc:
        _save(tmp_path, 20)
    assert ck.is_disk_full(exc.value)
    assert sorted(os.listdir(tmp_path)) == before          # no tmp file, no orphan model/optim of step 20
    assert ck.find_latest_step(str(tmp_path)) == 10
    ck.load_checkpoint(str(tmp_path), 10, "cpu")


def test_disk_full_is_found_behind_torch_save_runtime_error():
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 133312 vs 133264")
    except RuntimeError as exc:
        assert ck.disk_full_error(exc).errno == 28
    assert not ck.is_disk_full(RuntimeError("other")) and not ck.is_disk_full(OSError(13, "Permission denied"))
