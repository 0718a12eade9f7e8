"""speedrun.sh as a shell script: the stages it launches, its overrides, and torchrun's `--` separator.

PYTHON points at a recorder that logs each argv and exits 0, so the script's control flow is exercised for real
without training anything (the stages themselves are tested elsewhere)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_speedrun(tmp_path, **env_over):
    calls = tmp_path / "calls.txt"
    rec = tmp_path / "recpy"
    rec.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import os, sys
        if sys.argv[1:4] == ["-m", "nanochat.speedrun_helper", "validate"]:
            sys.exit(0)   # the knobs' own check is tested below; here: the script's control flow on any machine
        if sys.argv[1:3] == ["-m", "nanochat.speedrun_helper"]:   # the helper runs for real (it calls this again)
            os.execv({sys.executable!r}, [{sys.executable!r}] + sys.argv[1:])
        with open({str(calls)!r}, "a") as f:
            f.write(" ".join(sys.argv[1:]) + "\\n")
        with open({str(tmp_path / "run_ids.txt")!r}, "a") as f:
            f.write(os.environ.get("NANOCHAT_RUN_ID", "<unset>") + "\\n")
        """))
    rec.chmod(0o755)
    base = tmp_path / "base"
    (base / "report").mkdir(parents=True)
    (base / "report" / "report.md").write_text("# report\n")
    env = {k: v for k, v in os.environ.items() if k != "NANOCHAT_RUN_ID"}
    env.update(PYTHON=str(rec), NANOCHAT_BASE_DIR=str(base), HOME=str(tmp_path), PYTHONPATH=str(REPO), **env_over)
    script = tmp_path / "speedrun.sh"  # a copy: the script cds to its own folder and leaves report.md there
    script.write_text((REPO / "speedrun.sh").read_text())
    out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "report.md").exists()
    return [line.split() for line in calls.read_text().splitlines()]


def test_single_gpu_profile_defaults_and_overrides(tmp_path):
    calls = run_speedrun(tmp_path, DEVICE_BS="2", WANDB_RUN="myrun")
    background = [c for c in calls if c[:4] == ["-m", "nanochat.dataset", "-n", "240"]]
    assert len(background) == 1  # the bulk download runs in the background, so its place in the order varies
    modules = [c[1] for c in calls if c[0] == "-m" and c not in background]
    assert modules == ["nanochat.report", "nanochat.dataset", "nanochat.scripts.tok_train",
                       "nanochat.scripts.tok_eval", "nanochat.scripts.base_train", "nanochat.scripts.base_eval",
                       "nanochat.scripts.mid_train", "nanochat.scripts.chat_eval", "nanochat.scripts.chat_sft",
                       "nanochat.scripts.chat_eval", "nanochat.report"]
    base = next(c for c in calls if c[1] == "nanochat.scripts.base_train")
    assert {"--depth=20", "--device_batch_size=2", "--max_seq_len=1024", "--run=myrun"} <= set(base)
    sft = next(c for c in calls if c[1] == "nanochat.scripts.chat_sft")
    assert "--device_batch_size=2" in sft  # SFT keeps its own default (SFT_BS=2)
    first_data = next(c for c in calls if c[1] == "nanochat.dataset")
    assert first_data[2:] == ["-n", "8", "--identity"]  # upstream's identity conversations, before any training


def test_multi_gpu_goes_through_torchrun_with_separator(tmp_path):
    calls = run_speedrun(tmp_path, NPROC_PER_NODE="8", DEVICE_BS="32", SEQ_LEN="2048")
    base = next(c for c in calls if "nanochat.scripts.base_train" in c)
    assert base[:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=8", "-m",
                        "nanochat.scripts.base_train"]
    assert base[6] == "--" and "--max_seq_len=2048" in base and "--device_batch_size=32" in base


def test_cpu_demo_profile_runs_the_demo_stages(tmp_path):
    calls = run_speedrun(tmp_path, PROFILE="cpu-demo")
    modules = [c[1] for c in calls]
    assert modules[:3] == ["nanochat.report", "nanochat.dataset", "nanochat.scripts.tok_train"]
    assert calls[1][2:] == ["--demo"]
    base = next(c for c in calls if c[1] == "nanochat.scripts.base_train")
    assert {"--depth=2", "--device_batch_size=8", "--model_tag=demo", "--run=dummy"} <= set(base)
    assert modules[-1] == "nanochat.report"


def _run_ids_of_invocation(tmp_path, name, **env):
    d = tmp_path / name
    d.mkdir()
    run_speedrun(d, **env)
    return set((d / "run_ids.txt").read_text().split())


def test_every_stage_of_one_invocation_shares_one_run_id(tmp_path):
    (first,) = _run_ids_of_invocation(tmp_path, "a", PROFILE="cpu-demo")
    assert first.startswith("speedrun-")
    (second,) = _run_ids_of_invocation(tmp_path, "b", PROFILE="cpu-demo")
    assert second != first                                                    # a new invocation, a new lineage ...
    assert _run_ids_of_invocation(tmp_path, "c", NANOCHAT_RUN_ID="mine") == {"mine"}  # ... unless one is named
