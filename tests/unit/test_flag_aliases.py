"""The seed's setting names in the training stages (--ckpt_every, --resume_step, --resume_tag) and "did you mean"
for an unknown flag; nanotui's --set knows the same names; every pipeline script has a parse-only mode."""
import pytest

from nanochat.common import UsageError
from nanochat.trainer import FlagParser, add_training_flags


def parse(*argv):
    return add_training_flags(FlagParser()).parse_args(list(argv))


def test_seed_names_map_to_the_trainer_flags():
    a = parse("--ckpt_every=50", "--resume_step=-1", "--resume_tag=")
    assert (a.save_every, a.resume_from_step, a.model_tag) == (50, "latest", None)   # -1: newest of this run
    a = parse("--ckpt-every", "75", "--resume_step", "200", "--resume_tag", "d20")
    assert (a.save_every, a.resume_from_step, a.model_tag) == (75, "200", "d20")
    a = parse("--resume_tag=d12")            # a tag to resume from, no step: the newest of this run
    assert (a.model_tag, a.resume_from_step) == ("d12", "latest")
    assert parse("--resume_from_step=-1").resume_from_step is None   # the trainer's own flag keeps its meaning


@pytest.mark.parametrize("argv,words", [
    (["--save_evry=5"], ["--save_evry=5", "did you mean --save_every?"]),
    (["--ckpt_evry=5"], ["did you mean --ckpt_every?"]),
    (["--ckpt_every=5", "--save_every=6"], ["--ckpt_every=5", "--save_every=6", "disagree"]),
    (["--resume_step=-1", "--resume_from_step=7"], ["disagree"]),
])
def test_mistakes_are_one_line_naming_the_fix(argv, words):
    with pytest.raises(UsageError) as e:
        parse(*argv)
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


@pytest.mark.parametrize("module", ["nanochat.scripts.mid_train", "nanochat.scripts.chat_sft"])
def test_mid_and_sft_take_the_seed_names_too(module):
    import importlib
    a = importlib.import_module(module).build_parser().parse_args(["--ckpt_every=10", "--resume_step=-1"])
    assert (a.save_every, a.resume_from_step) == (10, "latest")


def test_nanotui_set_knows_the_same_names():
    from nanochat.flag_aliases import ALIASES
    from nanotui.core.plan import SEED_ALIASES, build_plan, set_stage_flag
    assert SEED_ALIASES == ALIASES
    stage = build_plan("cpu-demo").stage("base_train").to_dict()
    assert "--save_every=50" in set_stage_flag(stage, "ckpt_every", "50")["argv"]
    assert set_stage_flag(stage, "resume_step", "-1") == stage and set_stage_flag(stage, "resume_tag", "") == stage
    tagged = set_stage_flag(stage, "resume_tag", "mine")
    assert tagged["model_tag"] == "mine" and tagged["ckpt_subdir"] == "base_checkpoints/mine"


def test_stage_check_is_each_scripts_own_parser_without_data_or_device(tmp_path, monkeypatch):
    from nanochat.stage_check import check, check_many
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "base"))
    check("nanochat.scripts.base_train", ["--depth=20", "--device_batch_size=4", "--max_seq_len=1024"])
    with pytest.raises(UsageError, match="valid device batch sizes"):
        check("nanochat.scripts.base_train", ["--", "--device_batch_size=3"], world_size=2)
    with pytest.raises(UsageError, match="--depth=5"):
        check("nanochat.scripts.base_train", ["--depth=5"])
    with pytest.raises(UsageError, match="target_examples_per_step"):
        check("nanochat.scripts.chat_sft", ["--device_batch_size=4"], world_size=3)
    out = check_many([{"name": "data", "module": "nanochat.dataset", "argv": ["-n", "240", "--identity"]},
                      {"name": "report", "module": "nanochat.report", "argv": ["publish"]},
                      {"name": "x", "module": "os", "argv": []}])
    assert [r["ok"] for r in out["results"]] == [True, False, False] and out["torch"]
    assert not (tmp_path / "base").exists()


def test_shard_size_constant_is_the_datasets():
    from nanochat.dataset import SHARD_DISK_BYTES
    from nanotui.core import preflight
    assert preflight.SHARD_DISK_BYTES == SHARD_DISK_BYTES


@pytest.mark.parametrize("module", ["nanochat.scripts.base_train", "nanochat.scripts.mid_train",
                                    "nanochat.scripts.chat_sft"])
def test_check_args_reads_the_world_size_of_torchrun(module, monkeypatch):
    """What main() calls: without an explicit world size, torchrun's WORLD_SIZE decides the batch arithmetic."""
    import importlib
    mod = importlib.import_module(module)
    monkeypatch.setenv("WORLD_SIZE", "1")
    mod.check_args(["--device_batch_size=2"])
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(UsageError):
        mod.check_args(["--device_batch_size=2"])
