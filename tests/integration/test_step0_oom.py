"""An OOM on the very first step (step 0, before any checkpoint exists), end to end on CPU with the real base_train:
the stage leaves an emergency checkpoint of the untouched start, the supervisor falls back to half the batch, and
the run resumes from it and finishes with the weights of a run that never ran out of memory."""
import itertools
import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from nanochat import checkpoint as ck
from nanotui.runtime.rundir import RunDir
from nanotui.runtime.supervisor import spawn_supervisor

REPO = Path(__file__).resolve().parents[2]
TAG = "s0"
TINY = ["--depth=1", "--max_seq_len=32", "--eval_every=-1", "--core_metric_every=-1", "--sample_every=-1",
        "--run=dummy", f"--model_tag={TAG}", "--total_batch_size=256", "--num_iterations=6", "--save_every=-1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small demo corpus and a 512-token tokenizer (built once for this module)."""
    from nanochat.dataset import build_demo_corpus, iter_documents, list_train_shards
    from nanochat.tokenizer import Tokenizer
    root = tmp_path_factory.mktemp("step0_corpus")
    build_demo_corpus(str(root / "base_data"), max_mb=1.0, workers=1)
    docs = itertools.islice(iter_documents(list_train_shards(str(root / "base_data"))), 800)
    tok = Tokenizer.train_from_iterator(docs, 512)
    tok.save(str(root / "tokenizer"))
    tok.save_token_bytes(str(root / "tokenizer"))
    return root


def _populate(base: Path, corpus: Path) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    os.symlink(corpus / "base_data", base / "base_data")
    shutil.copytree(corpus / "tokenizer", base / "tokenizer")
    return base


def _run_here(monkeypatch, capsys, base: Path, *flags, fault=None):
    """base_train in this process (cheaper than a fresh interpreter): (exit code, stdout)."""
    from nanochat.scripts import base_train
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
    monkeypatch.setenv("NANOCHAT_NS_DTYPE", "float32")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("NANOCHAT_FAULT_OOM_FROM_STEP", raising=False)
    if fault is None:
        monkeypatch.delenv("NANOCHAT_FAULT_OOM_ABOVE_BS", raising=False)
    else:
        monkeypatch.setenv("NANOCHAT_FAULT_OOM_ABOVE_BS", str(fault))
    rc = base_train.main([*TINY, *flags])
    return rc, capsys.readouterr().out


def _weights(base: Path, step: int) -> dict:
    state, _, _ = ck.load_checkpoint(str(base / "base_checkpoints" / TAG), step, "cpu", load_optim=False)
    return state


def _assert_same(a: dict, b: dict):
    """Equal up to the summation order of a different gradient accumulation (relative Frobenius norm < 1e-5)."""
    assert a.keys() == b.keys()
    for k in a:
        denom = a[k].float().norm().item() or 1.0
        assert (a[k].float() - b[k].float()).norm().item() / denom < 1e-5, k


def _steps(text: str) -> list:
    return [int(m.group(1)) for m in re.finditer(r"^step (\d+)/", text, re.M)]


def test_step0_oom_leaves_an_emergency_start_checkpoint_and_resumes(tmp_path, corpus, monkeypatch, capsys):
    base = _populate(tmp_path / "oom", corpus)
    rc, out = _run_here(monkeypatch, capsys, base, "--device_batch_size=4", fault=2)
    assert rc == 3, out[-2000:]
    assert "OOM: CUDA out of memory at device_batch_size=4, step 1; emergency checkpoint: step 000000" in out
    assert _steps(out) == []                                        # no step completed
    meta = ck.validate_step(str(base / "base_checkpoints" / TAG), 0)
    assert meta["reason"] == "oom" and meta["device_batch_size"] == 4
    rc, out = _run_here(monkeypatch, capsys, base, "--device_batch_size=2", "--resume_from_step=latest", fault=2)
    assert rc == 0, out[-2000:]
    assert "Resuming optimization from step 0 (device batch size 2" in out
    assert _steps(out) == list(range(6))
    clean = _populate(tmp_path / "clean", corpus)
    assert _run_here(monkeypatch, capsys, clean, "--device_batch_size=4")[0] == 0
    _assert_same(_weights(base, 6), _weights(clean, 6))


@pytest.mark.slow
def test_supervisor_falls_back_from_a_step0_oom_and_finishes(tmp_path, corpus):
    """The supervised path: exit 3 at step 0, the ladder halves the batch (4 -> 2), the resumed attempt starts at
    the emergency checkpoint (step 0) and the stage ends done with every step taken once."""
    base = _populate(tmp_path / "sup", corpus)
    stage = {"name": "base_train", "argv": [sys.executable, "-m", "nanochat.scripts.base_train", *TINY,
                                             "--device_batch_size=4"],
             "env": {"NANOCHAT_FAULT_OOM_ABOVE_BS": "2", "NANOCHAT_NS_DTYPE": "float32", "WANDB_MODE": "disabled",
                     "PYTHONPATH": str(REPO)},
             "trains": True, "ckpt_subdir": f"base_checkpoints/{TAG}", "total_batch_size": 256, "device_bs": 4,
             "seq_len": 32, "world_size": 1, "num_iterations": 6, "model_tag": TAG, "log_kind": "base"}
    plan = {"profile": "step0", "base_dir": str(base), "cwd": str(REPO), "grace": 0, "stop_timeout": 10,
            "gpu_interval": 0.5, "overrides": {}, "stages": [stage]}
    rd = RunDir.create(base, plan)
    sup = spawn_supervisor(rd)
    try:
        deadline = time.monotonic() + 240
        while rd.read_state().get("phase") not in ("done", "failed", "stopped") or rd.supervisor_alive():
            assert time.monotonic() < deadline, rd.supervisor_log.read_text()[-2000:]
            time.sleep(0.2)
    finally:
        if sup.poll() is None:
            sup.kill()
    st = rd.read_state()
    assert st["phase"] == "done", (st.get("reason"), rd.supervisor_log.read_text()[-2000:])
    evs = rd.read_events()
    assert [(e["from_bs"], e["to_bs"]) for e in evs if e["type"] == "fallback"] == [(4, 2)]
    ooms = [e for e in evs if e["type"] == "oom"]
    assert len(ooms) == 1 and ooms[0]["device_bs"] == 4 and ooms[0].get("emergency_step") == 0
    starts = [e["argv"] for e in evs if e["type"] == "stage_started"]
    assert "--device_batch_size=2" in starts[-1] and any(a.startswith("--resume_from_step=") for a in starts[-1])
    logs = [p.read_text() for p in rd.list_logs() if "base_train" in p.name]
    assert [_steps(t) for t in logs] == [[], list(range(6))]
    assert st["stages"][0]["device_bs"] == 2
