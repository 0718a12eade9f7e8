"""mid_train and chat_sft on the shared trainer: exact optimizer-step counts, LR multiplier in [0, 1], masked SFT
batches without NaN, clear batch errors, offline exit 2, and exact resume after SIGKILL and an injected OOM."""
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from pipeline_fixtures import make_base_checkpoint, run_stage

MID = ["nanochat.scripts.mid_train", "--model_tag=demo", "--device_batch_size=2", "--max_seq_len=64",
       "--total_batch_size=512", "--demo", "--eval_every=-1", "--device_type=cpu"]
SFT = ["nanochat.scripts.chat_sft", "--model_tag=demo", "--source=base", "--target_examples_per_step=4",
       "--max_seq_len=96", "--demo", "--eval_every=-1", "--device_type=cpu"]
ENV = {"NANOCHAT_NS_DTYPE": "float32", "OMP_NUM_THREADS": "1"}


def test_mid_counts_optimizer_steps_and_lr_stays_in_range(base_dir):
    make_base_checkpoint(base_dir)
    out = run_stage(*MID, "--num_iterations=5", "--save_every=-1", env=ENV)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "gradient accumulation steps: 4" in out.stdout
    steps = re.findall(r"^step (\d+)/(\d+) .*\| lrm: ([0-9.\-]+) \|", out.stdout, re.M)
    assert [int(s) for s, _, _ in steps] == [0, 1, 2, 3, 4] and {t for _, t, _ in steps} == {"00005"}
    assert all(0.0 <= float(lrm) <= 1.0 for _, _, lrm in steps)
    assert (base_dir / "mid_checkpoints" / "demo" / "meta_000005.json").exists()


def test_sft_fully_masked_first_micro_batch_has_no_nan(base_dir, monkeypatch, capsys):
    make_base_checkpoint(base_dir)
    from nanochat.scripts import chat_sft
    masked = {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]}
    normal = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]}
    monkeypatch.setattr(chat_sft, "sft_mixture", lambda split, demo, **kw: [masked, normal, masked, normal])
    rc = chat_sft.main(["--model_tag=demo", "--source=base", "--device_batch_size=1", "--target_examples_per_step=2",
                        "--max_seq_len=32", "--num_iterations=2", "--save_every=-1", "--eval_every=-1",
                        "--device_type=cpu"])
    out = capsys.readouterr().out
    assert rc == 0
    # upstream's batch lines (the dashboard reads the device batch and examples per step from them)
    assert "Target examples per step: 2\nDevice batch size: 1\n" in out and "=> Setting grad accum steps: 2" in out
    losses = re.findall(r"Training loss: ([^|]+)\|", out)
    assert len(losses) == 2 and all(float(v) == float(v) and float(v) > 0 for v in losses), out


def test_sft_device_batch_must_divide(base_dir):
    out = run_stage(*SFT, "--device_batch_size=3")
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "valid device batch sizes: 1, 2, 4" in last


def test_offline_real_data_is_one_line_exit_2(base_dir):
    make_base_checkpoint(base_dir)
    env = {"NANOCHAT_HF_ENDPOINT": "http://127.0.0.1:9"}
    # no identity conversations downloaded yet: said first, before any dataset download is tried
    out = run_stage("nanochat.scripts.mid_train", "--model_tag=demo", "--device_type=cpu", env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no identity conversations at") and "nanochat.dataset --identity" in last
    from nanochat.tasks.identity import BUNDLED_IDENTITY_FILE
    out = run_stage("nanochat.scripts.mid_train", "--model_tag=demo", "--device_type=cpu",
                    f"--identity_file={BUNDLED_IDENTITY_FILE}", env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot download") and "--demo" in last


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _run_until_checkpoint(args, step, env):
    """Start a stage and SIGKILL it right after checkpoint `step` is committed."""
    full_env = dict(os.environ, **env)
    proc = subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=full_env)
    for line in proc.stdout:
        if line.startswith(f"Checkpoint saved: step {step:06d}"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["mid", "sft"])
def test_exact_resume_after_sigkill_and_oom(stage, base_dir, tmp_path, monkeypatch):
    args = (MID if stage == "mid" else SFT) + ["--num_iterations=6", "--save_every=2"]
    ckpt = {"mid": "mid_checkpoints", "sft": "chatsft_checkpoints"}[stage]
    # the reference: one uninterrupted run in another base dir with the same base model
    ref_dir = tmp_path / "reference"
    ref_dir.mkdir()
    make_base_checkpoint(ref_dir)
    ref = run_stage(*args, env={**ENV, "NANOCHAT_BASE_DIR": str(ref_dir)})
    assert ref.returncode == 0, ref.stderr[-2000:]
    # the interrupted run: SIGKILL after step 2, then an OOM at B=2 from step 4, then resume at B=1
    make_base_checkpoint(base_dir)
    _run_until_checkpoint(args, 2, ENV)
    oom = run_stage(*args, "--resume_from_step=latest",
                    env={**ENV, "NANOCHAT_FAULT_OOM_ABOVE_BS": "1", "NANOCHAT_FAULT_OOM_FROM_STEP": "4"})
    assert oom.returncode == 3, oom.stdout[-2000:] + oom.stderr[-2000:]
    assert "Resuming optimization from step 2" in oom.stdout and "OOM: CUDA out of memory" in oom.stdout
    done = run_stage(*args, "--resume_from_step=latest", "--device_batch_size=1", env=ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Resuming optimization from step 4" in done.stdout
    a = _weights(ref_dir / ckpt / "demo" / "model_000006.pt")
    b = _weights(base_dir / ckpt / "demo" / "model_000006.pt")
    for name in a:
        diff = (a[name].float() - b[name].float()).norm() / (a[name].float().norm() + 1e-12)
        assert diff < 1e-3, (name, diff.item())


def _base_of_run(base_dir, run_id, step=3):
    """The fixture's base model re-committed as `step` of lineage `run_id` (step 0 stays, without run id)."""
    from nanochat import checkpoint as ck
    make_base_checkpoint(base_dir)
    d = str(base_dir / "base_checkpoints" / "demo")
    state, _, meta = ck.load_checkpoint(d, 0, "cpu", load_optim=False)
    ck.save_checkpoint(d, step, state, None, {"model_config": meta["model_config"], "stage": "base",
                                              "run_id": run_id}, quiet=True)
    return d


def test_later_stages_load_this_runs_model_or_say_how_to_load_another(base_dir):
    from nanochat import checkpoint as ck
    d = _base_of_run(base_dir, "run-A")
    env = dict(ENV, NANOCHAT_RUN_ID="run-B")
    out = run_stage(*MID, "--num_iterations=2", "--save_every=-1", env=env)
    assert out.returncode == 2
    assert out.stderr.strip() == (f"error: no base checkpoint of run run-B in {d}; it holds run run-A (newest: step 3); "
                                  f"to use that one on purpose pass --source_run_id=run-A or --source_step=3")
    out = run_stage("nanochat.scripts.base_eval", "--model_tag=demo", "--demo", "--device_type=cpu", env=env)
    assert out.returncode == 2 and "pass --run_id=run-A or --step=3" in out.stderr
    assert out.stderr.strip().count("\n") == 0
    assert not (base_dir / "mid_checkpoints").exists()

    out = run_stage(*MID, "--num_iterations=2", "--save_every=-1", "--source_run_id=run-A", env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Loaded base model demo step 3 of run run-A" in out.stdout
    meta = ck.validate_step(str(base_dir / "mid_checkpoints" / "demo"), 2)
    assert meta["run_id"] == "run-B"
    assert meta["init_from"] == {"stage": "base", "model_tag": "demo", "step": 3, "run_id": "run-A"}

    out = run_stage(*SFT, "--num_iterations=1", "--save_every=-1", "--source=mid", "--device_batch_size=2", env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Loaded mid model demo step 2 of run run-B" in out.stdout  # this run's own mid model, no flag needed
    meta = ck.validate_step(str(base_dir / "chatsft_checkpoints" / "demo"), 1)
    assert meta["run_id"] == "run-B" and meta["init_from"]["run_id"] == "run-B"


@pytest.mark.parametrize("stage", ["mid", "sft"])
def test_mid_and_sft_train_without_clipping_and_sft_momentum_stays_095(stage, base_dir, monkeypatch):
    """Upstream's mid_train and chat_sft clip no gradient; its SFT keeps Muon's momentum at 0.95 from step 0."""
    from nanochat.checkpoint import load_checkpoint
    from nanochat.scripts import chat_sft, mid_train
    make_base_checkpoint(base_dir)
    clips = []
    # a stand-in that records the call and, like the real one, returns the total norm (the divergence guard reads it)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: clips.append(a) or torch.zeros(()))
    monkeypatch.setenv("NANOCHAT_NS_DTYPE", "float32")
    args = (MID if stage == "mid" else SFT)[1:] + ["--num_iterations=2", "--save_every=-1"]
    main = mid_train.main if stage == "mid" else chat_sft.main
    assert main(args) == 0
    assert clips == []
    ckpt = base_dir / ("mid_checkpoints" if stage == "mid" else "chatsft_checkpoints") / "demo"
    _, optim_states, _ = load_checkpoint(str(ckpt), 2, "cpu")
    momenta = [g["momentum"] for s in optim_states for g in s["param_groups"] if "momentum" in g]
    # mid warms momentum up over 300 steps like base training (0.85 at step 0, 0.85 + 0.1/300 at step 1)
    assert momenta and momenta == pytest.approx([0.95 if stage == "sft" else 0.85 + 0.1 / 300] * len(momenta))
    if stage == "sft":
        assert main(args + ["--grad_clip=1.0", "--muon_momentum_warmup", "--model_tag=demo",
                            "--resume_from_step=-1"]) == 0 and clips  # ours, opt-in
