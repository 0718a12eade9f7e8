"""nanotui/core/preflight.py: what the facts about a machine mean for a plan (pure; the CLI tests run it for real)."""
from nanotui.core.plan import build_plan
from nanotui.core.preflight import checkpoint_bytes, disk_need, evaluate, stage_command
from nanotui.core.vram import ModelShape

OK_CHECK = {"torch": "2.9.0+cu128", "torch_error": None, "cuda": True, "devices": 1, "results": [], "wandb": True}
BIG_DISK = {"free": 10**13, "path": "/data", "shards": 0}


def plan(profile="4090", **over):
    return build_plan(profile, over, python="/venv/bin/python").to_dict()


def errors(findings, check=None):
    return [f.line for f in findings if f.level == "error" and (check is None or f.check == check)]


def test_a_good_machine_passes():
    f = evaluate(plan(), {"stage_check": OK_CHECK, "disk": BIG_DISK, "env": {}})
    assert not errors(f) and f[0].level == "ok"


def test_ranks_against_visible_devices():
    f = evaluate(plan(NPROC_PER_NODE=2), {"stage_check": OK_CHECK, "disk": BIG_DISK, "env": {}})
    assert errors(f, "ranks") == ["NPROC_PER_NODE=2 needs 2 visible CUDA devices and there is 1; set "
                                  "NPROC_PER_NODE=1 (or check CUDA_VISIBLE_DEVICES)"]
    cpu = dict(OK_CHECK, cuda=False, devices=0)   # cpu-demo on two CPU ranks (gloo) is fine
    assert not errors(evaluate(plan("cpu-demo", NPROC_PER_NODE=2), {"stage_check": cpu, "disk": BIG_DISK}))


def test_gpu_profile_without_cuda_and_old_torch_allocator():
    f = evaluate(plan(), {"stage_check": dict(OK_CHECK, cuda=False, devices=0), "disk": BIG_DISK})
    assert "needs a CUDA GPU" in errors(f, "cuda")[0]
    old = dict(OK_CHECK, torch="2.5.1+cu121")
    warn = [x.line for x in evaluate(plan(), {"stage_check": old, "disk": BIG_DISK, "env": {}})
            if x.check == "allocator"]
    assert warn and "PYTORCH_ALLOC_CONF" in warn[0] and "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in warn[0]
    fixed = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
    assert not [x for x in evaluate(plan(), {"stage_check": old, "disk": BIG_DISK, "env": fixed})
                if x.check == "allocator"]
    configured = dict(old, allocator_configured=True, allocator={"name": "PYTORCH_CUDA_ALLOC_CONF",
                                                                  "value": "expandable_segments:True"})
    assert not [x for x in evaluate(plan(), {"stage_check": configured, "disk": BIG_DISK, "env": {}})
                if x.check == "allocator"]   # the stages set the name this torch reads themselves
    off = dict(configured, allocator={"name": "PYTORCH_ALLOC_CONF", "value": "expandable_segments:False"})
    (line,) = [x.line for x in evaluate(plan(), {"stage_check": off, "disk": BIG_DISK}) if x.check == "allocator"]
    assert "PYTORCH_ALLOC_CONF=expandable_segments:False" in line and "expandable_segments:True" in line


def test_wandb_needs_a_login_unless_offline():
    p = plan(WANDB_RUN="d20-first")
    assert "wandb login" in errors(evaluate(p, {"stage_check": OK_CHECK, "disk": BIG_DISK, "env": {}}), "wandb")[0]
    for env, login in (({"WANDB_MODE": "offline"}, False), ({"WANDB_MODE": "disabled"}, False), ({}, True)):
        f = evaluate(p, {"stage_check": OK_CHECK, "disk": BIG_DISK, "env": env, "wandb_login": login})
        assert not errors(f, "wandb")
    assert not errors(evaluate(plan(), {"stage_check": OK_CHECK, "disk": BIG_DISK, "env": {}}), "wandb")  # dummy


def test_disk_is_sized_from_shards_and_retained_checkpoints():
    d20 = checkpoint_bytes(ModelShape(20, 65536, 1024), cuda=True)
    assert 4.6e9 < d20 < 4.7e9          # 560,988,160 params: weights + AdamW (embedding, lm_head) + Muon momentum
    need = disk_need(plan(), {"shards": 0}, cuda=True)
    assert need["shard_count"] == 241 and need["shards"] == 241 * 100_000_000   # 240 + the validation shard
    assert need["ckpt_count"] == 3 * (3 + 2) and need["checkpoints"] == 15 * d20
    assert disk_need(plan(), {"shards": 241, "tokenizer": True, "identity": True}, cuda=True)["shards"] == 0
    f = evaluate(plan(), {"stage_check": OK_CHECK, "disk": dict(BIG_DISK, free=50 * 10**9), "env": {}})
    (line,) = errors(f, "disk")
    assert "50.0 GB free" in line and "241 x 100 MB" in line and "NANOCHAT_BASE_DIR" in line


def test_stage_command_reads_python_and_torchrun_argv():
    assert stage_command(["py", "-m", "nanochat.scripts.tok_eval"]) == ("py", "nanochat.scripts.tok_eval", [], 1)
    argv = ["py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=8", "-m",
            "nanochat.scripts.base_train", "--", "--depth=20"]
    assert stage_command(argv) == ("py", "nanochat.scripts.base_train", ["--depth=20"], 8)
    assert stage_command(["bash", "speedrun.sh"]) is None and stage_command(["py", "fake_trainer.py"]) is None


def test_flag_refusals_and_vram_warnings_are_one_line():
    sc = dict(OK_CHECK, results=[{"name": "chat_sft", "ok": False, "error": "--device_batch_size=3 does not divide "
                                  "--target_examples_per_step=32; valid device batch sizes: 1, 2, 4, 8, 16, 32"}])
    (line,) = errors(evaluate(plan(), {"stage_check": sc, "disk": BIG_DISK, "env": {}}), "flags")
    assert line.startswith("chat_sft: --device_batch_size=3") and "set SFT_BS" in line
    f = evaluate(plan(), {"stage_check": OK_CHECK, "disk": BIG_DISK, "env": {},
                          "vram": [("base_train", 16, 23.6, 21.6, "RTX 4090", 8)]})
    (warn,) = [x for x in f if x.check == "vram"]
    assert warn.level == "warn" and "DEVICE_BS=16" in warn.line and "DEVICE_BS=8 is predicted to fit" in warn.line
    assert all("\n" not in x.line for x in f)
