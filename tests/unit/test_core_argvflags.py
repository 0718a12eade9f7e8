"""core.argvflags: the one helper that reads, sets and drops `--flag=V` / `--flag V` in stage argvs."""
from nanotui.core.argvflags import drop_flag, flag_value, set_flag


def test_flag_value_both_spellings_last_wins():
    argv = ["python", "-m", "x", "--device_batch_size=8", "--max-seq-len", "1024", "--device-batch-size=4"]
    assert flag_value(argv, "device_batch_size") == "4" and flag_value(argv, "--max_seq_len") == "1024"
    assert flag_value(argv, "run") is None


def test_set_flag_keeps_form_drops_duplicates_or_appends():
    assert set_flag(["a", "--device-batch-size", "8", "--x=1"], "device_batch_size", 2) == \
        ["a", "--device-batch-size", "2", "--x=1"]
    assert set_flag(["a", "--device_batch_size=8", "--device-batch-size", "4"], "device_batch_size", 2) == \
        ["a", "--device_batch_size=2"]
    assert set_flag(["torchrun", "-m", "m", "--"], "--model-tag", "d12") == ["torchrun", "-m", "m", "--", "--model_tag=d12"]


def test_drop_flag():
    assert drop_flag(["a", "--resume_from_step", "5", "--resume-from-step=latest", "b"], "resume_from_step") == ["a", "b"]
