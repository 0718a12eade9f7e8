"""base_train --device_batch_size=auto in process on CPU: the probe picks the largest batch the fault injector lets
through, and training afterwards is bit-identical to a run started at that batch by hand (the probe restores
weights, optimizer state and RNG; the total batch and thus the optimisation are unchanged)."""
import pytest

from test_base_train import STEP_LINE, _torchrun, corpus_template, train, train_dir  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow


def test_auto_batch_trains_exactly_like_the_chosen_batch(train_dir, capsys, monkeypatch):
    monkeypatch.setenv("NANOCHAT_FAULT_OOM_ABOVE_BS", "2")
    rc, auto_lines, _ = train(capsys, "--model_tag=auto", bs="auto", total=256, iters=4)
    assert rc == 0
    outcomes = [line.rsplit("-> ", 1)[1] for line in auto_lines if line.startswith("Device batch probe")]
    assert outcomes == ["OOM", "OOM", "fits"]                    # 8 and 4 rows OOM, 2 fits
    assert any(line.startswith("Device batch size auto: 2 (headroom 10%") for line in auto_lines)
    assert "Total batch size 256 => gradient accumulation steps: 4" in auto_lines
    rc, hand_lines, _ = train(capsys, "--model_tag=hand", bs=2, total=256, iters=4)
    assert rc == 0
    losses = lambda lines: [m.group(4) for line in lines if (m := STEP_LINE.match(line))]  # noqa: E731
    assert losses(auto_lines) == losses(hand_lines) and len(losses(hand_lines)) == 4


def test_auto_batch_under_torchrun_ranks_agree(train_dir):
    """Two Gloo ranks probe together (an OOM on any rank skips the candidate on all) and pick the same size."""
    run = _torchrun("--device_batch_size=auto", "--total_batch_size=256", "--num_iterations=2", "--save_every=-1",
                    env={"NANOCHAT_FAULT_OOM_ABOVE_BS": "2"})
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    outcomes = [(int(line.split("device_batch_size=")[1].split()[0]), line.rsplit("-> ", 1)[1])
                for line in lines if line.startswith("Device batch probe")]
    assert outcomes == [(4, "OOM"), (2, "fits")]                  # 256 / (32 x 2 ranks) = 4 rows per rank
    assert "Total batch size 256 => gradient accumulation steps: 2" in lines
    assert len([m for line in lines if (m := STEP_LINE.match(line))]) == 2
