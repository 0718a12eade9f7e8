"""Exact resume with --compile=on (inductor on the CPU, so slow): the compiled model and Newton–Schulz resume
bitwise like the eager path does (tests/integration/test_base_train.py covers eager)."""
import pytest
import torch

from test_base_train import (copy_step, corpus_template, fresh_base, step_losses, train, train_dir,  # noqa: F401
                             weights)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_resume_with_compile_on_is_bitwise_exact(train_dir, capsys, monkeypatch, tmp_path,  # noqa: F811
                                                 corpus_template):  # noqa: F811
    rc, full_lines, _ = train(capsys, "--compile=on", iters=6, save_every=3)
    assert rc == 0
    full = step_losses(full_lines)
    assert sorted(full) == list(range(6))
    full_weights = weights(train_dir, 6)

    again = fresh_base(tmp_path, corpus_template, "resumed", monkeypatch)
    copy_step(train_dir, again, 3)
    rc, lines, _ = train(capsys, "--compile=on", "--resume_from_step=3", iters=6, save_every=3)
    assert rc == 0
    resumed = step_losses(lines)
    assert sorted(resumed) == [3, 4, 5]
    assert all(resumed[s] == full[s] for s in resumed)
    w = weights(again, 6)
    assert all(torch.equal(w[k], full_weights[k]) for k in full_weights)
