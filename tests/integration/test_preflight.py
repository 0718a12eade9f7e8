"""The preflight before every launch, end to end: `nanotui start --dry-run` refuses in seconds with one line per
cause, writes nothing, accepts the seed's setting names; a real `start` is refused the same way; `nanotui plan`
exits 1 when nothing fits and keeps the row of an explicit --device-bs; `nanotui --version`; `nanotui doctor`."""
import os
import time

import pytest

from supervisor_helpers import cli


def tree(base):
    return sorted((str(p.relative_to(base)), p.stat().st_mtime_ns, p.stat().st_size if p.is_file() else 0)
                  for p in base.rglob("*"))


@pytest.fixture
def populated(base_dir):
    (base_dir / "base_data").mkdir()
    (base_dir / "base_data" / "shard_00000.parquet").write_bytes(b"x" * 10)
    (base_dir / "tokenizer").mkdir()
    (base_dir / "tokenizer" / "tokenizer.json").write_text("{}")
    return base_dir


def refused(r):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    return lines


@pytest.mark.parametrize("args,env,want", [
    (["--profile", "cpu-demo", "--set", "base_train:--save_evry=5"], {},
     [["base_train", "--save_evry=5", "did you mean --save_every?"]]),
    (["--profile", "cpu-demo"], {"SFT_BS": "3"},
     [["chat_sft", "--device_batch_size=3", "valid device batch sizes: 1, 2, 4, 8, 16, 32", "set SFT_BS"]]),
    (["--profile", "4090"], {"NPROC_PER_NODE": "2", "CUDA_VISIBLE_DEVICES": ""},
     [["profile 4090 needs a CUDA GPU", "--profile cpu-demo"], ["NPROC_PER_NODE=2 needs 2 visible CUDA devices"]]),
])
def test_dry_run_refuses_in_seconds_one_line_per_cause_writing_nothing(populated, args, env, want):
    before = tree(populated)
    t0 = time.monotonic()
    r = cli("start", "--dry-run", *args, env=env)
    took = time.monotonic() - t0
    lines = refused(r)
    for words in want:   # each cause: its own line, naming it and the fix
        assert any(all(w in line for w in words) for line in lines), (words, lines)
    assert took < 30, took   # seconds, not hours (about 2 s on an idle laptop; CI shares two cores)
    assert tree(populated) == before
    # the same refusal stops a real start, before any run directory exists
    if "--set" in args:
        r = cli("start", *args, env=env)
        assert refused(r) == lines and tree(populated) == before


def test_dry_run_accepts_the_seeds_names_and_shows_the_stages(populated):
    before = tree(populated)
    r = cli("start", "--dry-run", "--profile", "cpu-demo", "--set", "base_train:--ckpt_every=50",
            "--set", "base_train:--resume_step=-1", "--set", "base_train:--resume_tag=")
    assert r.returncode == 0, r.stderr
    assert "stage command line(s) accepted by their own parsers" in r.stdout
    base_line = next(line for line in r.stdout.splitlines() if line.strip().startswith("base_train:"))
    assert "--save_every=50" in base_line and "ckpt_every" not in base_line
    assert "nothing started, nothing written" in r.stdout
    assert tree(populated) == before


def test_plan_exits_nonzero_when_nothing_fits_and_shows_an_explicit_batch(base_dir):
    r = cli("plan", "--profile", "4090", "--gpu", "4090", "--seq-len", "131072")
    assert r.returncode == 1 and "nothing fits" in r.stderr and "Traceback" not in r.stderr
    r = cli("plan", "--profile", "4090", "--gpu", "4090", "--device-bs", "64")
    assert r.returncode == 0
    base_table = r.stdout.split("mid_train:")[0]
    assert any(line.split()[:1] == ["64"] and line.rstrip().endswith("no") for line in base_table.splitlines())
    r = cli("plan", "--profile", "4090", "--gpu", "4090")
    assert not any(line.split()[:1] == ["64"] for line in r.stdout.splitlines())   # only when asked for


def test_version():
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("nanotui ") and r.stdout.split()[1][0].isdigit()


def test_doctor_fails_a_gpu_profile_without_cuda_and_sizes_the_plan(base_dir):
    r = cli("doctor", "--profile", "4090", env={"CUDA_VISIBLE_DEVICES": ""}, timeout=120)
    assert r.returncode == 1, r.stdout
    assert "[FAIL] cuda:" in r.stdout and "needs one" in r.stdout
    disk = next(line for line in r.stdout.splitlines() if "] disk:" in line)
    assert "241 missing" in disk and "24.1 GB" in disk and "checkpoints" in disk and "4.7 GB" in disk
    assert "] ranks: NPROC_PER_NODE=1" in r.stdout


def test_doctor_checks_the_configured_profile(base_dir, user_config):
    """Without --profile, doctor checks the profile `start` would use (config file, NANOTUI_PROFILE), else 4090; a
    broken config file is one FAIL line, not a refusal to diagnose."""
    user_config('profile = "cpu-demo"\n')
    r = cli("doctor", timeout=120)
    assert "[info] profile: cpu-demo (from " in r.stdout and "config.toml" in r.stdout, r.stdout
    assert "[FAIL] cuda:" not in r.stdout                      # cpu-demo needs no GPU
    r = cli("doctor", env={"NANOTUI_PROFILE": "4090", "CUDA_VISIBLE_DEVICES": ""}, timeout=120)
    assert "[info] profile: 4090 (from NANOTUI_PROFILE)" in r.stdout and "[FAIL] cuda:" in r.stdout, r.stdout
    user_config("profile = 4090\n")                              # not TOML: a string must be quoted
    r = cli("doctor", "--profile", "cpu-demo", timeout=120)
    assert r.returncode == 1 and "[FAIL] config: " in r.stdout and "[info] profile: cpu-demo (from --profile)" \
        in r.stdout, r.stdout
    assert "Traceback" not in r.stdout + r.stderr
