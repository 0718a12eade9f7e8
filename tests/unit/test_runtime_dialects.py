"""Dialect discovery (script lookup, hash cache), upstream committed steps, attempt argv, and the bash-script hook."""
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from nanotui.runtime import dialects, scripts
from nanotui.runtime.scriptshim import training_script

REPO = Path(__file__).resolve().parents[2]
PARSER_2026 = textwrap.dedent("""
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--device-batch-size", type=int, default=32)
    parser.add_argument("--total-batch-size", type=int, default=-1)
    parser.add_argument("--save-every", type=int, default=-1)
    parser.add_argument("--resume-from-step", type=int, default=-1)
""")
CONFIG_2025 = "device_batch_size = 32\ndepth = 20\nexec(open('nanochat/configurator.py').read())\n"


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOTUI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("NANOTUI_SAVE_EVERY", raising=False)
    root = tmp_path / "nanochat"
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "base_train.py").write_text(PARSER_2026)
    return root


def test_find_script_for_python_torchrun_and_paths(checkout):
    p = checkout / "scripts" / "base_train.py"
    assert dialects.find_script(["python", "-m", "scripts.base_train", "--depth=4"], str(checkout)) == (p, "base_train")
    tr = ["torchrun", "--standalone", "--nproc_per_node=2", "-m", "scripts.base_train", "--", "--depth=4"]
    assert dialects.find_script(tr, str(checkout)) == (p, "base_train")
    assert dialects.find_script(["python", "scripts/base_train.py"], str(checkout)) == (p, "base_train")
    assert dialects.find_script(["python", "-m", "scripts.chat_sft"], str(checkout)) is None   # no such file
    assert dialects.find_script(["python", "-m", "scripts.base_eval"], str(checkout)) is None


def test_discovery_is_cached_by_file_hash(checkout, monkeypatch):
    p = checkout / "scripts" / "base_train.py"
    d = dialects.discover(p, "base_train")
    assert d.version == "2026"
    cached = list(dialects.cache_dir().glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["version"] == "2026"
    parse = dialects.parse_source
    monkeypatch.setattr(dialects, "parse_source", lambda *a: pytest.fail("parsed again despite the cache"))
    assert dialects.discover(p, "base_train") == d
    p.write_text(CONFIG_2025)                       # another checkout version: another hash, parsed afresh
    monkeypatch.setattr(dialects, "parse_source", parse)
    assert dialects.discover(p, "base_train").version == "2025-11"
    assert len(list(dialects.cache_dir().glob("*.json"))) == 2


def test_our_own_scripts_keep_their_dialect(checkout, tmp_path):
    (checkout / "scripts" / "base_train.py").write_text("from nanochat.trainer import Trainer\n")
    plan, notes = dialects.command_plan(["python", "-m", "scripts.base_train"], str(tmp_path), str(checkout))
    assert "dialect" not in plan["stages"][0] and notes == []


def test_command_plan_adds_a_periodic_save_and_says_so(checkout, tmp_path, monkeypatch):
    argv = ["python", "-m", "scripts.base_train", "--depth=4"]
    plan, notes = dialects.command_plan(argv, str(tmp_path), str(checkout))
    st = plan["stages"][0]
    assert st["argv"] == argv + ["--save-every=500"] and st["save_every"] == 500 and st["save_every_added"]
    assert st["ckpt_dir"] == str(tmp_path / "base_checkpoints" / "d4") and st["total_batch_size"] is None
    assert "adds --save-every=500" in notes[0]
    monkeypatch.setenv("NANOTUI_SAVE_EVERY", "25")
    plan, _ = dialects.command_plan(argv + ["--save-every=40"], str(tmp_path), str(checkout))
    assert "save_every_added" not in plan["stages"][0] and plan["stages"][0]["argv"][-1] == "--save-every=40"
    (checkout / "scripts" / "base_train.py").write_text(CONFIG_2025)
    plan, notes = dialects.command_plan(argv, str(tmp_path), str(checkout))
    assert plan["stages"][0]["dialect"]["version"] == "2025-11" and "cannot resume" in notes[0]
    assert plan["stages"][0]["argv"] == argv


def _torch_file(path: Path, cut: bool = False):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"x" * 1000)
    if cut:
        path.write_bytes(path.read_bytes()[:-30])


def _ckpt(d: Path, step: int, ranks=(0,), cut_optim=False, meta="{}"):
    _torch_file(d / f"model_{step:06d}.pt")
    (d / f"meta_{step:06d}.json").write_text(meta)
    for r in ranks:
        _torch_file(d / f"optim_{step:06d}_rank{r}.pt", cut=cut_optim)


def test_newest_committed_step_skips_steps_cut_short(tmp_path):
    d = tmp_path / "ck"
    d.mkdir()
    assert dialects.newest_committed_step(str(d)) is None
    _ckpt(d, 10, ranks=(0, 1))
    _ckpt(d, 20, cut_optim=True)                     # killed while writing its optimizer state
    _ckpt(d, 30, meta="{trunc")                       # meta not JSON
    (d / "meta_000040.json").write_text("{}")         # meta without its model file
    assert dialects.newest_committed_step(str(d)) == 10
    _ckpt(d, 50, ranks=(0,))
    assert dialects.newest_committed_step(str(d), world_size=2) == 10   # rank 1's shard missing
    _torch_file(d / "optim_000050_rank1.pt")
    assert dialects.newest_committed_step(str(d), world_size=2) == 50
    _torch_file(d / "model_000060.pt")                # the 2025-11 layout: optim_<step>.pt, one file
    _torch_file(d / "optim_000060.pt")
    (d / "meta_000060.json").write_text("{}")
    assert dialects.newest_committed_step(str(d)) == 60


def test_attempt_argv_turns_latest_into_the_committed_step(checkout, tmp_path):
    plan, _ = dialects.command_plan(["python", "-m", "scripts.base_train", "--model-tag=t"], str(tmp_path),
                                    str(checkout))
    st = plan["stages"][0]
    assert dialects.attempt_argv(st, 16, "latest") == (st["argv"] + ["--device-batch-size=16"], None)
    ck = Path(st["ckpt_dir"])
    ck.mkdir(parents=True)
    _ckpt(ck, 20)
    argv, step = dialects.attempt_argv(st, 16, "latest")
    assert step == 20 and argv[-2:] == ["--device-batch-size=16", "--resume-from-step=20"]
    assert dialects.resume_words(st, "latest") == "committed step 20 (--resume-from-step=20)"
    assert dialects.attempt_argv(st, None, 5)[0][-1] == "--resume-from-step=5"


def test_supervisor_stage_argv_uses_the_dialect(checkout, tmp_path):
    from nanotui.runtime.supervisor import stage_argv
    plan, _ = dialects.command_plan(["python", "-m", "scripts.base_train"], str(tmp_path), str(checkout))
    argv = stage_argv(plan["stages"][0], 8, "latest")
    assert "--device-batch-size=8" in argv and not any(a.startswith("--resume_from_step") for a in argv)
    assert not any(a.startswith("--device_batch_size") for a in argv)


# ---------------------------------------------------------------- whole bash scripts
def test_training_calls_are_recognised():
    assert training_script(["-m", "scripts.base_train", "--", "--depth=4"]) == "base_train"
    assert training_script(["-m", "torch.distributed.run", "--standalone", "-m", "nanochat.scripts.chat_sft",
                            "--"]) == "chat_sft"
    assert training_script(["scripts/mid_train.py", "--x=1"]) == "mid_train"
    assert training_script(["-m", "scripts.base_eval"]) is None and training_script(["-c", "print(1)"]) is None
    assert training_script(["-m", "nanochat.dataset", "-n", "8"]) is None


def test_shell_scripts_are_recognised(tmp_path):
    sh = tmp_path / "run.sh"
    sh.write_text("#!/bin/bash\necho hi\n")
    assert scripts.is_shell_script(["bash", "runs/speedrun.sh"]) and scripts.is_shell_script([str(sh)])
    assert scripts.is_shell_script(["bash", "-c", "python -m scripts.base_train"])   # bash -c reads BASH_ENV too
    assert not scripts.is_shell_script(["bash"]) and not scripts.is_shell_script(["python", "x.py"])
    plan, notes = scripts.run_plan(["bash", str(sh)], str(tmp_path), str(tmp_path))
    assert plan["stages"][0]["script"] and not plan["stages"][0]["trains"] and "whole script" in notes[0]


def test_hook_passes_other_calls_through_even_after_path_changes(tmp_path):
    """The BASH_ENV hook defines python/python3/torchrun as functions: a venv activated by the script does not
    bypass them, and calls that train nothing run exactly as written (arguments, exit codes)."""
    run = tmp_path / "run"
    run.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "BASH_ENV"}
    extra = scripts.shim_env(run, {"script": True}, env)
    assert scripts.shim_env(run, {"name": "x"}, env) == {}
    fake_bin = tmp_path / "venv" / "bin"
    fake_bin.mkdir(parents=True)
    (fake_bin / "python").symlink_to(sys.executable)
    script = tmp_path / "s.sh"
    script.write_text(f"""export PATH={fake_bin}:$PATH
type python | head -1
python -c 'import sys; print("args", sys.argv[1:]); sys.exit(3)' "a b" c
echo "rc=$?"
""")
    env.update(extra)
    env.pop("NANOTUI_PARENT_RUN")                     # no run to hand training to: everything passes through
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert "python is a function" in r.stdout
    assert "args ['a b', 'c']" in r.stdout and "rc=3" in r.stdout, r.stdout + r.stderr


def test_resume_of_a_script_that_cannot_resume_needs_consent(checkout, tmp_path):
    from nanotui.runtime.launch import StartError, resume_run
    from nanotui.runtime.rundir import RunDir
    (checkout / "scripts" / "base_train.py").write_text(CONFIG_2025)
    plan, _ = dialects.command_plan(["python", "-m", "scripts.base_train"], str(tmp_path), str(checkout))
    stage = plan["stages"][0]
    assert dialects.resume_refusal(stage, None, "r") is None          # nothing done: nothing lost
    rd = RunDir.create(tmp_path, plan)
    st = rd.load_state()
    st.phase, st.step = "failed", 7
    st.stages[0].state = "failed"
    rd.write_state(st)
    with pytest.raises(StartError) as e:
        resume_run(rd)
    assert e.value.code == 2 and "step 0" in str(e.value) and "7 steps done so far are lost" in str(e.value)
    assert f"nanotui resume {rd.run_id} --grace 0" in str(e.value)
    assert dialects.resume_words(stage, "latest", 7).startswith("step 0: ")


SFT_2026 = textwrap.dedent("""
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-tag", type=str, default=None)
    parser.add_argument("--model-step", type=int, default=None)
    parser.add_argument("--device-batch-size", type=int, default=None, help="None: inherit")
    parser.add_argument("--max-seq-len", type=int, default=None)
    parser.add_argument("--total-batch-size", type=int, default=None)
""")


def test_2026_sft_inherits_batch_settings_from_its_base_checkpoint(checkout, tmp_path):
    (checkout / "scripts" / "chat_sft.py").write_text(SFT_2026)
    src = tmp_path / "base_checkpoints" / "d4"
    src.mkdir(parents=True)
    (src / "meta_000010.json").write_text(json.dumps({"device_batch_size": 8, "max_seq_len": 128}))
    (src / "meta_000020.json").write_text(json.dumps({"device_batch_size": 4, "max_seq_len": 256,
                                                      "total_batch_size": 4096}))
    plan, notes = dialects.command_plan(["python", "-m", "scripts.chat_sft"], str(tmp_path), str(checkout))
    st = plan["stages"][0]
    assert (st["ckpt_subdir"], st["device_bs"], st["seq_len"], st["total_batch_size"]) == \
        ("chatsft_checkpoints/d4", 4, 256, 4096)
    assert "inherited from the base checkpoint" in notes[0]
    assert dialects.attempt_argv(st, 2, "latest")[0][-1] == "--device-batch-size=2"   # the fallback is explicit
    plan, _ = dialects.command_plan(["python", "-m", "scripts.chat_sft", "--model-step=10", "--device-batch-size=2"],
                                    str(tmp_path), str(checkout))
    st = plan["stages"][0]
    assert (st["device_bs"], st["seq_len"], st["total_batch_size"]) == (2, 128, 524288)   # upstream's fallback


def test_resume_step_of_an_upstream_run_is_any_committed_step(checkout, tmp_path):
    """Upstream's checkpoints carry no run id: `resume --step S` checks S against the committed steps."""
    from nanotui.runtime.launch import StartError, check_resume_step
    from nanotui.runtime.rundir import RunDir
    plan, _ = dialects.command_plan(["python", "-m", "scripts.base_train", "--model-tag=t"], str(tmp_path),
                                    str(checkout))
    plan["base_dir"] = str(tmp_path)
    rd = RunDir.create(tmp_path, plan)
    ck = Path(plan["stages"][0]["ckpt_dir"])
    ck.mkdir(parents=True)
    _ckpt(ck, 10)
    _ckpt(ck, 20, cut_optim=True)
    assert dialects.committed_steps(str(ck)) == [10]
    check_resume_step(rd, 10)
    with pytest.raises(StartError) as e:
        check_resume_step(rd, 20)
    assert "no committed checkpoint at step 20" in str(e.value) and "committed steps: 10" in str(e.value)


def test_a_first_attempt_keeps_the_users_own_resume_flag(checkout, tmp_path):
    argv = ["python", "-m", "scripts.base_train", "--resume-from-step=5", "--save-every=5"]
    plan, _ = dialects.command_plan(argv, str(tmp_path), str(checkout))
    st = plan["stages"][0]
    assert dialects.attempt_argv(st, 8, None)[0] == argv + ["--device-batch-size=8"]
    assert "--resume-from-step=5" not in dialects.attempt_argv(st, 8, "latest")[0]   # a restart picks its own


def test_launcher_runs_training_unsupervised_when_the_scripts_run_is_gone(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "nanotui" / "runtime" / "scriptshim.py"), "python",
                          sys.executable, "-c", "import sys; print('ran', sys.argv[1:])", "scripts/base_train.py"],
                         capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, NANOTUI_PARENT_RUN=str(tmp_path / "gone")))
    assert out.returncode == 0 and "running it unsupervised" in out.stdout
    assert "ran ['scripts/base_train.py']" in out.stdout


def test_resume_everything_leaves_a_scripts_training_stage_to_its_script(tmp_path):
    """After a reboot the script's run re-runs the script, whose launcher resumes (or waits for) the stage's run;
    resuming that run on its own too would train it twice at once."""
    from nanotui.runtime.rundir import RunDir
    from nanotui.runtime.service import resume_unfinished
    parent = RunDir.create(tmp_path, {"profile": "command", "stages": [{"name": "command", "argv": ["bash", "x.sh"],
                                                                        "script": True}]})
    child = RunDir.create(tmp_path, {"profile": "base_train", "parent": parent.run_id,
                                     "stages": [{"name": "base_train", "argv": ["python"], "trains": True}]})
    for rd, phase in ((parent, "done"), (child, "running")):   # only the stage's run is left unfinished here
        st = rd.load_state()
        st.phase = phase
        rd.write_state(st)
    out = resume_unfinished(tmp_path)
    assert out == [(child.run_id, True, f"left to its script's run {parent.run_id}, which resumes it: it was running "
                                        f"when its supervisor went away (power loss, crash or reboot)")]
    assert not child.supervisor_alive()
