"""An OOM before the training loop (loading the model, moving it to the GPU) ends like one inside it: exit 3."""
import torch

from nanochat.trainer import exit_3_on_startup_oom


def test_startup_oom_prints_the_oom_line_and_returns_3(capsys):
    @exit_3_on_startup_oom
    def main(argv=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    assert main(["--device-batch-size", "16", "--run=dummy"]) == 3
    out, err = capsys.readouterr()
    assert out.strip() == "OOM: CUDA out of memory at device_batch_size=16, step 0; emergency checkpoint: none"
    assert err.startswith("torch.OutOfMemoryError: CUDA out of memory.")


def test_other_errors_and_return_codes_pass_through():
    @exit_3_on_startup_oom
    def ok(argv=None):
        return 4

    @exit_3_on_startup_oom
    def broken(argv=None):
        raise ValueError("not an OOM")

    assert ok([]) == 4
    try:
        broken([])
    except ValueError as exc:
        assert str(exc) == "not an OOM"
    else:
        raise AssertionError("a non-OOM error must not be swallowed")
