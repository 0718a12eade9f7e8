"""Plans: profiles' exact argv, overrides and their validation, argv rewriting, done-stage detection."""
import json

import pytest

from nanotui.core.plan import (PROFILE_NAMES, STAGE_NAMES, Plan, PlanError, Stage, argv_with, build_plan,
                               collect_overrides, first_pending, flag_value, plan_for_command, stages_done)

PY = "/venv/bin/python"


def test_cpu_demo_exact_argv():
    plan = build_plan("cpu-demo", {}, PY)
    assert plan.names == ["data", "tok_train", "base_train", "base_eval", "mid_train", "chat_eval_mid", "chat_sft",
                          "chat_eval_sft", "report"]
    argv = {s.name: " ".join(s.argv) for s in plan.stages}
    assert argv["data"] == f"{PY} -m nanochat.dataset --demo"
    assert argv["tok_train"] == f"{PY} -m nanochat.scripts.tok_train --vocab_size=4096 --max_chars=20000000"
    assert argv["base_train"] == (
        f"{PY} -m nanochat.scripts.base_train --depth=2 --max_seq_len=256 --device_batch_size=8 "
        "--total_batch_size=8192 --num_iterations=200 --eval_every=50 --eval_tokens=65536 --core_metric_every=-1 "
        "--sample_every=100 --save_every=25 --model_tag=demo --run=dummy")
    assert argv["base_eval"] == f"{PY} -m nanochat.scripts.base_eval --model_tag=demo --demo"
    assert argv["mid_train"] == (
        f"{PY} -m nanochat.scripts.mid_train --model_tag=demo --device_batch_size=8 --max_seq_len=256 "
        "--total_batch_size=8192 --num_iterations=100 --save_every=25 --demo --run=dummy")
    assert argv["chat_eval_mid"] == f"{PY} -m nanochat.scripts.chat_eval -i mid --model_tag=demo --demo"
    assert argv["chat_sft"] == (f"{PY} -m nanochat.scripts.chat_sft --model_tag=demo --device_batch_size=4 "
                                "--num_iterations=100 --save_every=25 --demo --run=dummy")
    assert argv["chat_eval_sft"] == f"{PY} -m nanochat.scripts.chat_eval -i sft --model_tag=demo --demo"
    assert argv["report"] == f"{PY} -m nanochat.report generate"
    base = plan.stage("base_train")
    assert (base.trains, base.ckpt_subdir, base.total_batch_size, base.device_bs, base.seq_len,
            base.num_iterations, base.log_kind) == (True, "base_checkpoints/demo", 8192, 8, 256, 200, "base")
    assert plan.stage("chat_sft").ckpt_subdir == "chatsft_checkpoints/demo"
    assert not plan.stage("base_eval").trains


def test_4090_profile_and_overrides():
    plan = build_plan("4090", {"WANDB_RUN": "myrun"}, PY)
    assert plan.names == list(STAGE_NAMES)
    assert plan.stage("data").argv[-2:] == ("-n", "240")
    # upstream's identity conversations are fetched with the shards, for both GPU profiles (not the offline demo)
    assert "--identity" in plan.stage("data").argv and "--identity" in build_plan("8xh100", {}, PY).stage("data").argv
    assert "--identity" not in build_plan("cpu-demo", {}, PY).stage("data").argv
    assert " ".join(plan.stage("base_train").argv).endswith(
        "base_train --depth=20 --device_batch_size=4 --max_seq_len=1024 --run=myrun")
    assert " ".join(plan.stage("mid_train").argv).endswith("--device_batch_size=4 --max_seq_len=1024 --run=myrun")
    assert " ".join(plan.stage("chat_sft").argv).endswith("chat_sft --device_batch_size=2 --run=myrun")
    assert plan.stage("chat_eval_mid").argv[-2:] == ("-i", "mid")
    assert plan.stage("base_train").total_batch_size == 524288
    assert plan.stage("base_train").num_iterations is None   # computed by the trainer from the data:param ratio
    small = build_plan("4090", {"DEVICE_BS": "2", "SEQ_LEN": "512", "SFT_BS": 1}, PY)
    assert "--device_batch_size=2" in small.stage("base_train").argv
    assert "--max_seq_len=512" in small.stage("mid_train").argv
    assert "--device_batch_size=1" in small.stage("chat_sft").argv
    assert small.overrides == {"DEVICE_BS": 2, "SEQ_LEN": 512, "SFT_BS": 1}


def test_8xh100_uses_torchrun_for_gpu_stages():
    plan = build_plan("8xh100", {}, PY)
    base = plan.stage("base_train").argv
    assert base[:8] == (PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=8", "-m",
                        "nanochat.scripts.base_train", "--")
    assert "--device_batch_size=32" in base and "--max_seq_len=2048" in base
    assert plan.stage("base_train").world_size == 8
    assert plan.stage("tok_train").argv[:3] == (PY, "-m", "nanochat.scripts.tok_train")
    assert plan.stage("report").argv == (PY, "-m", "nanochat.report", "generate")
    one = build_plan("8xh100", {"NPROC_PER_NODE": "1", "DEVICE_BS": "16"}, PY)
    assert one.stage("base_train").argv[:3] == (PY, "-m", "nanochat.scripts.base_train")


@pytest.mark.parametrize("profile, overrides, message", [
    ("nope", {}, "unknown profile 'nope'; choose one of: cpu-demo, 4090, 8xh100"),
    ("4090", {"DEVICE_BS": "abc"}, "DEVICE_BS must be a positive integer, got 'abc'"),
    ("4090", {"DEVICE_BS": "0"}, "DEVICE_BS must be a positive integer, got '0'"),
    ("4090", {"SEQ_LEN": "-5"}, "SEQ_LEN must be a positive integer, got '-5'"),
    ("4090", {"NPROC_PER_NODE": "2.5"}, "NPROC_PER_NODE must be a positive integer, got '2.5'"),
    ("4090", {"WANDB_RUN": "a b"}, "WANDB_RUN must not contain spaces"),
    ("4090", {"DEVICE_BS": "3"}, "base_train: DEVICE_BS=3 x SEQ_LEN=1024 x NPROC_PER_NODE=1 = 3072 tokens does not "
                                 "divide the total batch size 524288"),
    ("cpu-demo", {"FOO": "1"}, "unknown override 'FOO'"),
])
def test_plan_errors_are_one_clear_line(profile, overrides, message):
    with pytest.raises(PlanError) as err:
        build_plan(profile, overrides, PY)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_collect_overrides_env_then_flags():
    env = {"DEVICE_BS": "8", "SEQ_LEN": "", "HOME": "/root", "WANDB_RUN": "envrun"}
    got = collect_overrides(env, {"--device-bs": 2, "wandb_run": None, "SEQ_LEN": "512"})
    assert got == {"DEVICE_BS": 2, "WANDB_RUN": "envrun", "SEQ_LEN": "512"}
    assert build_plan("cpu-demo", got, PY).stage("base_train").device_bs == 2


def test_plan_dict_roundtrip():
    plan = build_plan("cpu-demo", {}, PY)
    d = json.loads(json.dumps(plan.to_dict()))
    assert d["profile"] == "cpu-demo" and d["stages"][2]["name"] == "base_train"
    assert {"name", "argv", "env", "trains", "ckpt_subdir", "total_batch_size", "device_bs"} <= set(d["stages"][0])
    assert tuple(Stage.from_dict(s) for s in d["stages"]) == plan.stages
    assert PROFILE_NAMES == ("cpu-demo", "4090", "8xh100")


def test_argv_with():
    stage = build_plan("cpu-demo", {}, PY).stage("base_train")
    argv = argv_with(stage, device_bs=2, resume="latest")
    assert "--device_batch_size=2" in argv and "--device_batch_size=8" not in argv
    assert argv[-1] == "--resume_from_step=latest" and argv.index("--device_batch_size=2") == 5
    again = argv_with({"argv": argv}, device_bs=1, resume=150)
    assert again.count("--resume_from_step=150") == 1 and "--resume_from_step=latest" not in again
    spaced = argv_with({"argv": ["python", "x.py", "--device-batch-size", "8", "--resume_from_step", "5"]}, 4, "latest")
    assert spaced == ["python", "x.py", "--device-batch-size", "4", "--resume_from_step=latest"]
    assert argv_with({"argv": ["python", "-m", "m"]}, device_bs=4) == ["python", "-m", "m", "--device_batch_size=4"]
    assert argv_with(stage) == list(stage.argv)
    with pytest.raises(PlanError):
        argv_with(stage, resume="yesterday")
    assert flag_value(argv, "device-batch-size") == "2"


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_stages_done_and_first_pending(tmp_path):
    plan = build_plan("cpu-demo", {}, PY)
    assert stages_done(plan, str(tmp_path)) == [] and first_pending(plan, str(tmp_path)) == 0
    touch(tmp_path / "base_data" / "shard_01822.parquet")
    assert "data" not in stages_done(plan, str(tmp_path))     # validation shard only
    touch(tmp_path / "base_data" / "shard_00000.parquet")
    touch(tmp_path / "tokenizer" / "tokenizer.json")
    ck = tmp_path / "base_checkpoints" / "demo"
    for step in (175, 200):
        files = {f"model_{step:06d}.pt": 3}
        touch(ck / f"model_{step:06d}.pt", b"abc")
        touch(ck / f"meta_{step:06d}.json", json.dumps({"step": step, "files": files}).encode())
    touch(tmp_path / "report" / "base-model-evaluation.md")
    touch(tmp_path / "report" / "chat-evaluation-sft.md")     # done, but after a pending stage
    assert stages_done(plan, str(tmp_path)) == ["data", "tok_train", "base_train", "base_eval", "chat_eval_sft"]
    assert first_pending(plan, str(tmp_path)) == plan.names.index("mid_train")
    # a training stage stopped before its last step is not done
    (ck / "meta_000200.json").unlink()
    assert "base_train" not in stages_done(plan, str(tmp_path))
    real = build_plan("4090", {}, PY)
    for i in range(239):
        touch(tmp_path / "base_data" / f"shard_{i:05d}.parquet")
    assert "data" not in stages_done(real, str(tmp_path))
    touch(tmp_path / "base_data" / "shard_00239.parquet")
    assert "data" in stages_done(real, str(tmp_path))
    touch(tmp_path / "report" / "base-model-training.md")     # base d20 has no fixed step count: its report says done
    assert "base_train" in stages_done(real, str(tmp_path))


@pytest.mark.parametrize("argv, trains, kind, bs, subdir, world", [
    (["bash", "speedrun.sh"], False, None, None, None, 1),
    (["python", "-m", "scripts.base_train", "--depth=20", "--device_batch_size=16"], True, "base", 16,
     "base_checkpoints/d20", 1),
    (["torchrun", "--standalone", "--nproc_per_node=8", "-m", "scripts.mid_train", "--", "--model_tag=d26"], True,
     "mid", 32, "mid_checkpoints/d26", 8),
    (["python", "-m", "nanochat.scripts.chat_sft", "--device_batch_size", "2"], True, "sft", 2, None, 1),  # no base dir
    (["python", "scripts/base_train.py", "--depth", "12"], True, "base", 32, "base_checkpoints/d12", 1),
])
def test_plan_for_command(argv, trains, kind, bs, subdir, world):
    plan = plan_for_command(argv)
    assert isinstance(plan, Plan) and plan.profile == "command" and plan.names == ["command"]
    st = plan.stages[0]
    assert (st.trains, st.log_kind, st.device_bs, st.ckpt_subdir, st.world_size) == (trains, kind, bs, subdir, world)
    assert list(st.argv) == argv


def test_plan_for_empty_command():
    with pytest.raises(PlanError, match="nothing to run"):
        plan_for_command([])


def test_plan_for_command_finds_the_source_model_tag(tmp_path):
    for tag in ("d12", "d26", "d8"):
        (tmp_path / "base_checkpoints" / tag).mkdir(parents=True)
    st = plan_for_command(["python", "-m", "scripts.mid_train"], str(tmp_path)).stages[0]
    assert st.ckpt_subdir == "mid_checkpoints/d26"
    assert plan_for_command(["python", "-m", "scripts.chat_sft"], str(tmp_path)).stages[0].ckpt_subdir is None
    assert plan_for_command(["python", "-m", "scripts.base_train"]).stages[0].ckpt_subdir == "base_checkpoints/d20"
