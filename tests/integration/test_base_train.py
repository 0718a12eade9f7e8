"""base_train end to end on CPU: log lines, learning, grad-accum invariance, exact resume, OOM, SIGTERM, SIGKILL,
torchrun/Gloo vs. a single process, and bad input (one line, exit 2, nothing deleted)."""
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from nanochat import checkpoint as ck
from nanochat.common import run_main
from nanochat.scripts import base_train

TAG = "t"
TINY = ["--depth=1", "--max_seq_len=32", "--eval_every=-1", "--core_metric_every=-1", "--sample_every=-1",
        "--run=dummy", f"--model_tag={TAG}"]
STEP_LINE = re.compile(
    r"^step (\d{5})/(\d{5}) \((\d+\.\d{2})%\) \| loss: (\d+\.\d{6}) \| lrm: (\d\.\d{2}) \| dt: (\d+\.\d{2})ms \| "
    r"tok/sec: ([\d,]+) \| mfu: (n/a|\d+\.\d{2}) \| total time: (\d+\.\d{2})m$")


# ---------------------------------------------------------------------------------------------------------------------
# fixtures and helpers

@pytest.fixture(scope="session")
def corpus_template(tmp_path_factory):
    """A base dir holding a small demo corpus and a 512-token tokenizer trained on it (built once per session)."""
    import itertools

    from nanochat.dataset import build_demo_corpus, iter_documents, list_train_shards
    from nanochat.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("train_template")
    data_dir = root / "base_data"
    build_demo_corpus(str(data_dir), max_mb=1.5, workers=1)
    docs = itertools.islice(iter_documents(list_train_shards(str(data_dir))), 1500)
    tok = Tokenizer.train_from_iterator(docs, 512)
    tok.save(str(root / "tokenizer"))
    tok.save_token_bytes(str(root / "tokenizer"))
    return root


@pytest.fixture
def train_dir(base_dir, corpus_template):
    """The test's NANOCHAT_BASE_DIR, populated with the demo data (symlinked) and the tokenizer."""
    os.symlink(corpus_template / "base_data", base_dir / "base_data")
    shutil.copytree(corpus_template / "tokenizer", base_dir / "tokenizer")
    return base_dir


def ckpt_dir(base):
    return base / "base_checkpoints" / TAG


def train(capsys, *flags, total=256, bs=4, iters=20, save_every=-1):
    """Run base_train in-process; returns (exit code, stdout lines, stderr)."""
    argv = [*TINY, f"--device_batch_size={bs}", f"--total_batch_size={total}", f"--num_iterations={iters}",
            f"--save_every={save_every}", *flags]
    rc = base_train.main(argv)
    out = capsys.readouterr()
    return rc, out.out.splitlines(), out.err


def step_losses(lines):
    return {int(m.group(1)): float(m.group(4)) for line in lines if (m := STEP_LINE.match(line))}


def weights(base, step):
    state, _, _ = ck.load_checkpoint(str(ckpt_dir(base)), step, "cpu", load_optim=False)
    return state


def max_rel_diff(a, b):
    worst = 0.0
    for k in a:
        denom = a[k].float().norm().item() or 1.0
        worst = max(worst, (a[k].float() - b[k].float()).norm().item() / denom)
    return worst


def copy_step(src_base, dst_base, step):
    dst = ckpt_dir(dst_base)
    dst.mkdir(parents=True, exist_ok=True)
    for name in ck.validate_step(str(ckpt_dir(src_base)), step)["files"]:
        shutil.copy2(ckpt_dir(src_base) / name, dst / name)
    shutil.copy2(ckpt_dir(src_base) / ck.meta_name(step), dst / ck.meta_name(step))


def fresh_base(tmp_path, corpus_template, name, monkeypatch):
    d = tmp_path / name
    d.mkdir()
    os.symlink(corpus_template / "base_data", d / "base_data")
    shutil.copytree(corpus_template / "tokenizer", d / "tokenizer")
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(d))
    return d


def spawn(*flags, env=None):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "nanochat.scripts.base_train", *TINY, *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)


def wait_for_line(proc, pattern, timeout=120):
    """Read stdout until a line matches; returns the lines read so far."""
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if re.search(pattern, line):
            return lines
    raise AssertionError(f"no line matching {pattern!r}; got {lines[-5:]}")


# ---------------------------------------------------------------------------------------------------------------------
# learning and log lines

def test_tiny_model_learns_and_logs_like_upstream(train_dir, capsys):
    rc, lines, _ = train(capsys, "--eval_every=25", "--eval_tokens=2048", iters=50, save_every=25)
    assert rc == 0
    losses = step_losses(lines)
    assert sorted(losses) == list(range(50))
    assert losses[49] < losses[0] - 0.8, (losses[0], losses[49])
    for expected in ["Vocab size: 512", "Number of parameters: 114,688", "Tokens / micro-batch / rank: 4 x 32 = 128",
                     "Total batch size 256 => gradient accumulation steps: 2",
                     "Using user-provided number of iterations: 50", "Peak memory usage: 0.00MiB"]:
        assert expected in lines
    assert all(" | mfu: n/a | " in line for line in lines if STEP_LINE.match(line))
    bpbs = [float(m.group(2)) for line in lines if (m := re.match(r"^Step (\d{5}) \| Validation bpb: (\d+\.\d{4})$", line))]
    assert len(bpbs) == 3 and bpbs[-1] < bpbs[0]
    assert f"Minimum validation bpb: {min(bpbs):.4f}" in lines
    assert re.fullmatch(r"Total training time: \d+\.\d{2}m", lines[-2])
    # the final checkpoint precedes the end-of-run evaluation
    final = lines.index(f"Checkpoint saved: step 000050 -> {ckpt_dir(train_dir)}")
    assert lines[final + 1] == f"Step 00050 | Validation bpb: {bpbs[-1]:.4f}"
    meta = ck.validate_step(str(ckpt_dir(train_dir)), 50)
    assert meta["evals_done"] and abs(meta["val_bpb"] - bpbs[-1]) < 1e-4


def test_grad_accum_invariance_one_step(train_dir, capsys, monkeypatch, tmp_path, corpus_template):
    """One optimizer step at B=4, 2x2 and 1x4 (fp32 Newton-Schulz) gives the same weights within 1e-5 (relative,
    per tensor). The step starts from a checkpoint after 3 steps: from the zero-initialised output projections the
    very first Muon update orthogonalises a rank-deficient gradient, whose ill-defined directions turn 1e-7
    summation-order noise into ~1e-5 (at any precision)."""
    monkeypatch.setenv("NANOCHAT_NS_DTYPE", "float32")
    rc, _, _ = train(capsys, total=128, bs=4, iters=4, save_every=3)
    assert rc == 0
    start = weights(train_dir, 3)
    results = {}
    for bs in (4, 2, 1):
        base = fresh_base(tmp_path, corpus_template, f"bs{bs}", monkeypatch)
        copy_step(train_dir, base, 3)
        rc, lines, _ = train(capsys, "--resume_from_step=3", total=128, bs=bs, iters=4)
        assert rc == 0
        assert f"Total batch size 128 => gradient accumulation steps: {4 // bs}" in lines
        results[bs] = weights(base, 4)
    assert all(not torch.equal(start[k], results[4][k]) for k in start), "every tensor must move in the step"
    assert max_rel_diff(results[4], results[2]) < 1e-5
    assert max_rel_diff(results[4], results[1]) < 1e-5


# ---------------------------------------------------------------------------------------------------------------------
# exact resume

def test_resume_is_bitwise_exact_and_half_batch_within_1e5(train_dir, capsys, monkeypatch, tmp_path, corpus_template):
    monkeypatch.setenv("NANOCHAT_NS_DTYPE", "float32")
    rc, full_lines, _ = train(capsys, iters=20, save_every=10)
    assert rc == 0
    full = step_losses(full_lines)
    full_weights = weights(train_dir, 20)

    same = fresh_base(tmp_path, corpus_template, "same_batch", monkeypatch)
    copy_step(train_dir, same, 10)
    rc, lines, _ = train(capsys, "--resume_from_step=10", iters=20, save_every=10)
    assert rc == 0
    assert "Resuming optimization from step 10 (device batch size 4, gradient accumulation steps 2)" in lines
    resumed = step_losses(lines)
    assert sorted(resumed) == list(range(10, 20))
    assert all(resumed[s] == full[s] for s in resumed)
    w = weights(same, 20)
    assert all(torch.equal(w[k], full_weights[k]) for k in full_weights)

    half = fresh_base(tmp_path, corpus_template, "half_batch", monkeypatch)
    copy_step(train_dir, half, 10)
    rc, lines, _ = train(capsys, "--resume_from_step=latest", bs=2, iters=20, save_every=10)
    assert rc == 0
    assert "Total batch size 256 => gradient accumulation steps: 4" in lines
    resumed = step_losses(lines)
    assert sorted(resumed) == list(range(10, 20))
    assert max(abs(resumed[s] - full[s]) for s in resumed) <= 1.5e-5
    assert max_rel_diff(full_weights, weights(half, 20)) < 1e-5


def test_wandb_run_id_is_kept_across_resume(train_dir, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    rc, _, _ = train(capsys, "--run=unit-test", iters=4, save_every=2)
    assert rc == 0
    first = ck.validate_step(str(ckpt_dir(train_dir)), 2)["wandb_run_id"]
    assert re.fullmatch(r"[0-9a-f]{8}", first)
    os.unlink(ckpt_dir(train_dir) / ck.meta_name(4))
    rc, _, _ = train(capsys, "--run=unit-test", "--resume_from_step=latest", iters=4, save_every=2)
    assert rc == 0
    assert ck.validate_step(str(ckpt_dir(train_dir)), 4)["wandb_run_id"] == first


# ---------------------------------------------------------------------------------------------------------------------
# OOM, SIGTERM, SIGKILL

def test_oom_injection_emergency_checkpoint_and_smaller_resume(train_dir, capsys, monkeypatch, tmp_path,
                                                               corpus_template):
    monkeypatch.setenv("NANOCHAT_NS_DTYPE", "float32")
    monkeypatch.setenv("NANOCHAT_FAULT_OOM_ABOVE_BS", "2")
    monkeypatch.setenv("NANOCHAT_FAULT_OOM_FROM_STEP", "7")
    rc, lines, err = train(capsys, iters=12, save_every=5)
    assert rc == 3
    assert "OOM: CUDA out of memory at device_batch_size=4, step 8; emergency checkpoint: step 000007" in lines
    assert "torch.OutOfMemoryError" in err
    assert max(step_losses(lines)) == 6           # step 7 never completed
    meta = ck.validate_step(str(ckpt_dir(train_dir)), 7)
    assert meta["reason"] == "oom" and meta["device_batch_size"] == 4

    rc, lines, _ = train(capsys, "--resume_from_step=latest", bs=2, iters=12, save_every=5)
    assert rc == 0
    assert "Resuming optimization from step 7 (device batch size 2, gradient accumulation steps 4)" in lines
    assert min(step_losses(lines)) == 7
    resumed = weights(train_dir, 12)

    monkeypatch.delenv("NANOCHAT_FAULT_OOM_ABOVE_BS")
    clean = fresh_base(tmp_path, corpus_template, "clean", monkeypatch)
    rc, _, _ = train(capsys, iters=12, save_every=-1)
    assert rc == 0
    assert max_rel_diff(weights(clean, 12), resumed) < 1e-5


def test_sigterm_checkpoints_exits_4_and_resumes(train_dir, capsys):
    proc = spawn("--device_batch_size=4", "--total_batch_size=256", "--num_iterations=30", "--save_every=100")
    try:
        wait_for_line(proc, r"^step 00002/")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 4, err
    m = re.search(r"^Stopped on request \(SIGTERM\) at step (\d+); checkpoint: step (\d{6})$", out, re.M)
    assert m and int(m.group(1)) == int(m.group(2)) >= 3
    stopped_at = int(m.group(1))
    assert f"Checkpoint saved: step {stopped_at:06d}" in out
    assert ck.find_latest_step(str(ckpt_dir(train_dir))) == stopped_at
    rc, lines, _ = train(capsys, "--resume_from_step=latest", iters=30, save_every=100)
    assert rc == 0
    assert min(step_losses(lines)) == stopped_at and max(step_losses(lines)) == 29


def _kill_and_resume(base, rounds, iters, seed):
    """SIGKILL training at random moments (checkpointing every step, so often mid-save); after each kill the newest
    valid checkpoint must load and the next run must resume from exactly it."""
    rng = random.Random(seed)
    flags = ["--device_batch_size=4", "--total_batch_size=128", f"--num_iterations={iters}", "--save_every=1",
             "--keep_last=2", "--resume_from_step=latest"]
    expected, mid_save_kills = None, 0
    for _ in range(rounds):
        proc = spawn(*flags)
        try:
            # from the first step line on, training and checkpointing alternate (a kill right after `Resuming`
            # would, on a loaded machine, keep landing in the data-loader setup and never inside a save)
            lines = wait_for_line(proc, r"^(Checkpoint saved|step \d{5}/)", timeout=120)
            time.sleep(rng.uniform(0.0, 0.6))
        finally:
            proc.kill()
            proc.communicate()
        resumed = [int(m.group(1)) for line in lines if (m := re.match(r"Resuming optimization from step (\d+)", line))]
        assert resumed == ([expected] if expected is not None else []), (resumed, expected)
        names = os.listdir(ckpt_dir(base))
        committed = {n[5:11] for n in names if n.startswith("meta_")}
        if any(".tmp." in n or (n.endswith(".pt") and n.split("_")[1][:6] not in committed) for n in names):
            mid_save_kills += 1
        expected = ck.find_latest_step(str(ckpt_dir(base)))
        if expected is not None:
            ck.load_checkpoint(str(ckpt_dir(base)), expected, "cpu")  # the newest valid step loads
        if expected == iters:
            break
    proc = spawn(*flags)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert re.search(r"^Resuming optimization from step (\d+)", out, re.M).group(1) == str(expected)
    assert ck.find_latest_step(str(ckpt_dir(base))) == iters
    assert not [n for n in os.listdir(ckpt_dir(base)) if ".tmp." in n]
    return mid_save_kills


def test_sigkill_crash_safety_fast(train_dir):
    _kill_and_resume(train_dir, rounds=3, iters=30, seed=1)


@pytest.mark.slow
def test_sigkill_crash_safety_20_kills(train_dir):
    mid_save_kills = _kill_and_resume(train_dir, rounds=20, iters=400, seed=2)
    assert mid_save_kills >= 1, "no kill landed inside a checkpoint write"
    print(f"{mid_save_kills} of 20 kills landed mid-checkpoint")


# ---------------------------------------------------------------------------------------------------------------------
# distributed (torchrun, Gloo) vs. a single process reading both data lanes

def _torchrun(*flags, env=None):
    full_env = dict(os.environ, NANOCHAT_NS_DTYPE="float32", **(env or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "nanochat.scripts.base_train", "--", *TINY, *flags]
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=600)


def _lanes_losses(capsys, monkeypatch, tmp_path, corpus_template, iters):
    monkeypatch.setenv("NANOCHAT_NS_DTYPE", "float32")
    fresh_base(tmp_path, corpus_template, "lanes", monkeypatch)
    rc, lines, _ = train(capsys, "--data_lanes=2", total=256, bs=2, iters=iters, save_every=-1)
    assert rc == 0
    assert "Total batch size 256 => gradient accumulation steps: 4" in lines
    return step_losses(lines)


DDP_FLAGS = ["--device_batch_size=2", "--total_batch_size=256", "--save_every=3", "--keep_last=5"]


def test_torchrun_two_ranks_match_single_process(train_dir, capsys, monkeypatch, tmp_path, corpus_template):
    run = _torchrun(*DDP_FLAGS, "--num_iterations=4")
    assert run.returncode == 0, run.stderr[-2000:]
    names = set(os.listdir(ckpt_dir(train_dir)))
    assert {"optim_000003_rank0.pt", "optim_000003_rank1.pt", "model_000003.pt", "meta_000003.json"} <= names
    assert "Total batch size 256 => gradient accumulation steps: 2" in run.stdout
    meta = ck.validate_step(str(ckpt_dir(train_dir)), 3)
    assert meta["world_size"] == 2 and len(meta["loader_states"]) == 2
    ddp = step_losses(run.stdout.splitlines())
    assert sorted(ddp) == list(range(4))
    single = _lanes_losses(capsys, monkeypatch, tmp_path, corpus_template, iters=4)
    assert max(abs(single[s] - ddp[s]) for s in ddp) <= 1e-4


@pytest.mark.slow
def test_torchrun_resumes_from_per_rank_checkpoint(train_dir, capsys, monkeypatch, tmp_path, corpus_template):
    first = _torchrun(*DDP_FLAGS, "--num_iterations=6")
    assert first.returncode == 0, first.stderr[-2000:]
    ddp = step_losses(first.stdout.splitlines())
    os.unlink(ckpt_dir(train_dir) / "meta_000006.json")
    again = _torchrun(*DDP_FLAGS, "--num_iterations=6", "--resume_from_step=latest")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Resuming optimization from step 3" in again.stdout
    resumed = step_losses(again.stdout.splitlines())
    assert sorted(resumed) == [3, 4, 5]
    assert max(abs(resumed[s] - ddp[s]) for s in resumed) <= 1e-6
    single = _lanes_losses(capsys, monkeypatch, tmp_path, corpus_template, iters=6)
    assert max(abs(single[s] - ddp[s]) for s in ddp) <= 1e-4


# ---------------------------------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing deleted

def _snapshot(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _expect_usage_error(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        run_main(base_train.main, argv)
    assert exc.value.code == 2
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.err
    assert "Traceback" not in out.err
    return lines[0]


BASE_ARGS = [*TINY, "--num_iterations=5", "--total_batch_size=256"]


@pytest.mark.parametrize("flags, message", [
    (["--device_batch_size=3"], r"valid device batch sizes: 1, 2, 4, 8"),
    (["--device_batch_size=0"], r"device_batch_size.*must be >= 1"),
    (["--device_batch_size=-4"], r"device_batch_size.*must be >= 1"),
    (["--device_batch_size=abc"], r"device_batch_size.*not an integer"),
    (["--total_batch_size=1e5"], r"total_batch_size.*not an integer"),
    (["--device_batch_size=4", "--no_such_flag=1"], r"unrecognized arguments: --no_such_flag=1"),
    (["--device_batch_size=4", "--resume_from_step=99"], r"cannot resume from step 99 .*valid steps: 5"),
    (["--device_batch_size=4", "--resume_from_step=soon"], r"resume_from_step.*neither a step number nor 'latest'"),
])
def test_bad_input_is_one_line_exit_2_and_deletes_nothing(train_dir, capsys, flags, message):
    ck.save_checkpoint(str(ckpt_dir(train_dir)), 5, {"w": torch.zeros(2)}, [], {"x": 1}, quiet=True)
    before = _snapshot(train_dir)
    line = _expect_usage_error(capsys, [*BASE_ARGS, *flags])
    assert re.search(message, line), line
    assert _snapshot(train_dir) == before


def test_resume_with_other_total_batch_or_model_is_refused(train_dir, capsys):
    rc, _, _ = train(capsys, iters=2)
    assert rc == 0
    before = _snapshot(train_dir)
    line = _expect_usage_error(capsys, [*TINY, "--num_iterations=4", "--total_batch_size=128",
                                        "--device_batch_size=4", "--resume_from_step=2"])
    assert "total_batch_size=256" in line and "only the device batch may change" in line
    line = _expect_usage_error(capsys, [*TINY[1:], "--depth=2", "--num_iterations=4", "--total_batch_size=256",
                                        "--device_batch_size=4", "--resume_from_step=latest"])
    assert "model_config" in line and "--depth" in line
    assert _snapshot(train_dir) == before


def test_core_metric_skipped_in_one_line_when_bundle_unreachable(train_dir, capsys, monkeypatch):
    monkeypatch.setenv("NANOCHAT_EVAL_BUNDLE_URL", "http://127.0.0.1:9/eval_bundle.zip")
    rc, lines, _ = train(capsys, "--core_metric_every=1", iters=3)
    assert rc == 0
    skipped = [line for line in lines if "CORE metric" in line]
    assert len(skipped) == 1 and skipped[0].startswith("Step 00001 | CORE metric skipped: ")


def test_missing_data_directory(base_dir, corpus_template, capsys):
    shutil.copytree(corpus_template / "tokenizer", base_dir / "tokenizer")
    before = _snapshot(base_dir)
    line = _expect_usage_error(capsys, [*BASE_ARGS, "--device_batch_size=4"])
    assert "no training shards" in line and "python -m nanochat.dataset" in line
    assert _snapshot(base_dir) == before


def test_missing_tokenizer(base_dir, corpus_template, capsys):
    os.symlink(corpus_template / "base_data", base_dir / "base_data")
    before = _snapshot(base_dir)
    line = _expect_usage_error(capsys, [*BASE_ARGS, "--device_batch_size=4"])
    assert "no tokenizer" in line and "tok_train" in line
    assert _snapshot(base_dir) == before


def test_unwritable_base_dir(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(blocker / "base"))
    line = _expect_usage_error(capsys, [*BASE_ARGS, "--device_batch_size=4"])
    assert "base directory" in line and "NANOCHAT_BASE_DIR" in line
    assert blocker.read_text() == "not a directory"


def test_cli_accepts_dashes_and_spaces_and_rejects_in_a_real_process(train_dir):
    args = base_train.build_parser().parse_args(["--device-batch-size", "4", "--max_seq_len", "64",
                                                 "--total-batch-size=512", "--resume-from-step", "latest"])
    assert (args.device_batch_size, args.max_seq_len, args.total_batch_size, args.resume_from_step) == \
        (4, 64, 512, "latest")
    proc = subprocess.run([sys.executable, "-m", "nanochat.scripts.base_train", *BASE_ARGS, "--device-batch-size",
                           "3"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")
    assert "valid device batch sizes" in proc.stderr


# ---------------------------------------------------------------------------------------------------------------------
# run lineage: a run never resumes from, loads or prunes another run's checkpoints

def _files(d):
    return {n: (d / n).read_bytes() for n in sorted(os.listdir(d)) if not n.startswith(".")}


def test_second_run_never_resumes_or_prunes_the_first_runs_checkpoints(train_dir, capsys, monkeypatch):
    """The issue's end-to-end case: run A trained to the end; run B (same tag, its own run id) OOMs and falls back
    with --resume_from_step=latest. B must start fresh, resume from its OWN emergency checkpoint, keep A's steps
    (moved aside, readable with --model_tag=t.run-A) and prune only its own."""
    monkeypatch.setenv("NANOCHAT_RUN_ID", "run-A")
    rc, _, _ = train(capsys, iters=8, save_every=4)
    assert rc == 0
    a_files = _files(ckpt_dir(train_dir))

    monkeypatch.setenv("NANOCHAT_RUN_ID", "run-B")
    monkeypatch.setenv("NANOCHAT_FAULT_OOM_ABOVE_BS", "2")
    monkeypatch.setenv("NANOCHAT_FAULT_OOM_FROM_STEP", "5")
    rc, lines, _ = train(capsys, "--resume_from_step=latest", iters=12, save_every=2)
    assert rc == 3
    aside = train_dir / "base_checkpoints" / f"{TAG}.run-run-A"
    assert f"Checkpoints moved aside: steps 4..8 (2) of run run-A (not this run run-B) -> {aside}; use them with " \
           f"--model_tag={TAG}.run-run-A" in lines
    assert f"No checkpoint to resume from in {ckpt_dir(train_dir)}; starting fresh" in lines
    assert min(step_losses(lines)) == 0
    assert "OOM: CUDA out of memory at device_batch_size=4, step 6; emergency checkpoint: step 000005" in lines

    monkeypatch.delenv("NANOCHAT_FAULT_OOM_ABOVE_BS")
    rc, lines, _ = train(capsys, "--resume_from_step=latest", bs=2, iters=12, save_every=2)
    assert rc == 0
    assert "Resuming optimization from step 5 (device batch size 2, gradient accumulation steps 4)" in lines
    assert sorted(step_losses(lines)) == list(range(5, 12))
    d = str(ckpt_dir(train_dir))
    assert ck.list_valid_steps(d) == [8, 10, 12]                       # B's newest 3 (keep_last=3) ...
    assert {ck.step_run_id(d, s) for s in ck.list_valid_steps(d)} == {"run-B"}
    assert _files(aside) == a_files                                     # ... and A's, moved byte for byte
    assert ck.list_valid_steps(str(aside)) == [4, 8]
    meta = ck.validate_step(d, 12)
    assert meta["run_id"] == "run-B"

    # A's supervisor resumes A later: none of A's steps are in <tag> any more; it says where they went
    monkeypatch.setenv("NANOCHAT_RUN_ID", "run-A")
    rc, lines, _ = train(capsys, "--resume_from_step=latest", iters=2, save_every=2)
    assert rc == 0
    assert f"Note: checkpoints of this run run-A were moved aside to {aside}; this start is fresh; to continue " \
           f"them instead, resume with --model_tag={TAG}.run-run-A" in lines
    assert ck.list_valid_steps(str(train_dir / "base_checkpoints" / f"{TAG}.run-run-B")) == [8, 10, 12]


def test_resume_at_or_past_the_end_finishes_at_once(train_dir, capsys):
    rc, _, _ = train(capsys, iters=6, save_every=3)
    assert rc == 0
    rc, lines, _ = train(capsys, "--resume_from_step=latest", iters=6, save_every=3)
    assert rc == 0 and not step_losses(lines)
    assert any(line.startswith("Resuming optimization from step 6 ") for line in lines)
    # num_iterations lowered below the checkpoint: today's main trains forever (`step 00006/00004 (150.00%)`)
    proc = spawn("--device_batch_size=4", "--total_batch_size=256", "--num_iterations=4", "--save_every=3",
                 "--resume_from_step=latest")
    try:
        out, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert re.search(r"^Resuming optimization from step 6 ", out, re.M)
    assert "Checkpoint step 6 is past num_iterations=4: nothing left to train; finishing the stage" in out
    assert not re.search(r"^step \d+/", out, re.M)
    assert re.search(r"^Total training time: ", out, re.M)
    assert ck.find_latest_step(str(ckpt_dir(train_dir))) == 6


def test_resume_to_an_older_step_hides_the_later_ones_from_latest(train_dir, capsys, monkeypatch):
    monkeypatch.setenv("NANOCHAT_RUN_ID", "run-A")
    rc, _, _ = train(capsys, "--keep_last=0", iters=6, save_every=2)
    assert rc == 0
    later = {n: b for n, b in _files(ckpt_dir(train_dir)).items() if "000004" in n or "000006" in n}
    monkeypatch.setenv("NANOCHAT_FAULT_OOM_ABOVE_BS", "2")
    monkeypatch.setenv("NANOCHAT_FAULT_OOM_FROM_STEP", "3")
    rc, lines, _ = train(capsys, "--keep_last=0", "--resume_from_step=2", iters=6, save_every=2)
    assert rc == 3  # an OOM right after resuming at step 2: the fallback will ask for `latest`
    abandoned = train_dir / "base_checkpoints" / f"{TAG}.run-run-A.abandoned"
    assert f"Checkpoints moved aside: steps 4..6 (2) of run run-A (abandoned by resuming run run-A from step 2) -> " \
           f"{abandoned}; use them with --model_tag={TAG}.run-run-A.abandoned" in lines
    assert _files(abandoned) == later
    plan = ck.plan_resume(str(ckpt_dir(train_dir)), "latest", "run-A")
    assert plan.step == 3 and plan.aside == []


def test_two_sigterms_and_a_sigint_still_write_the_stop_checkpoint(train_dir):
    proc = spawn("--device_batch_size=4", "--total_batch_size=256", "--num_iterations=400", "--save_every=1000")
    try:
        wait_for_line(proc, r"^step 00002/")
        proc.send_signal(signal.SIGTERM)   # logout: the whole process group ...
        time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)   # ... then the supervisor's own
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 4, err
    # signals pending together are handled in signal-number order (SIGINT first), so either may be "the" stop
    m = re.search(r"^Stopped on request \((SIGTERM|SIGINT)\) at step (\d+); checkpoint: step (\d{6})$", out, re.M)
    assert m, out[-1000:]
    assert ck.find_latest_step(str(ckpt_dir(train_dir))) == int(m.group(2))
    ck.load_checkpoint(str(ckpt_dir(train_dir)), int(m.group(2)), "cpu")
    ignored = [line for line in err.splitlines() if line.startswith("Ignoring SIG")]
    assert ignored and all(f"already stopping on {m.group(1)}" in line for line in ignored), err


def test_second_trainer_on_the_same_directory_is_refused(train_dir, capsys, monkeypatch):
    first = spawn("--device_batch_size=4", "--total_batch_size=256", "--num_iterations=400", "--save_every=2",
                  "--keep_last=0", env={"NANOCHAT_RUN_ID": "run-A"})
    try:
        wait_for_line(first, r"^Checkpoint saved: step 000002")
        before = _files(ckpt_dir(train_dir))
        monkeypatch.setenv("NANOCHAT_RUN_ID", "run-B")  # the second trainer (in this process: exit 2, one line)
        line = _expect_usage_error(capsys, [*TINY, "--device_batch_size=4", "--total_batch_size=256",
                                            "--num_iterations=4"])
        assert line.startswith(f"error: checkpoint directory {ckpt_dir(train_dir)} is in use by another "
                               f"trainer (run run-A, pid {first.pid} on ")
        after = _files(ckpt_dir(train_dir))
        # B moved and deleted nothing of A (A itself rewrites its meta once the step's evals are done)
        assert all(after.get(n) == b for n, b in before.items() if n.endswith(".pt"))
        assert ck.step_run_id(str(ckpt_dir(train_dir)), 2) == "run-A"
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 4


# ---------------------------------------------------------------------------------------------------------------------
# a full disk during a checkpoint

def _leftovers(d):
    names = os.listdir(d)
    committed = {n[5:11] for n in names if n.startswith("meta_")}
    return [n for n in names if ".tmp." in n or (n.endswith(".pt") and n.split("_")[1][:6] not in committed)]


def test_disk_full_during_checkpoint_exits_1_with_one_line(train_dir, capsys, monkeypatch):
    real = ck._atomic_write

    def atomic_write(path, write_fn):  # the optimizer file of step 4 hits ENOSPC after a few bytes
        if os.path.basename(path) == "optim_000004_rank0.pt":
            def failing(f):
                f.write(b"partial")
                raise OSError(28, "No space left on device")
            return real(path, failing)
        return real(path, write_fn)
    monkeypatch.setattr(ck, "_atomic_write", atomic_write)
    rc, lines, err = train(capsys, iters=8, save_every=2)
    assert rc == 1
    disk = [line for line in lines if line.startswith("Disk full:")]
    assert disk == [f"Disk full: No space left on device while writing checkpoint step 000004 to "
                    f"{ckpt_dir(train_dir)}; checkpoint step 000002 is intact; free space and resume with "
                    f"--resume_from_step=latest"]
    assert "Traceback" not in err
    assert ck.find_latest_step(str(ckpt_dir(train_dir))) == 2
    assert _leftovers(ckpt_dir(train_dir)) == []


def test_disk_full_on_a_real_small_tmpfs(train_dir, capsys, monkeypatch, tmp_path):
    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True,
                           text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {mount.stderr.strip()}")
    try:
        base = mnt / "base"
        base.mkdir()
        os.symlink(train_dir / "base_data", base / "base_data")
        shutil.copytree(train_dir / "tokenizer", base / "tokenizer")
        monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
        rc, lines, err = train(capsys, "--keep_last=0", iters=40, save_every=1)
        assert rc == 1, (lines[-5:], err[-2000:])
        (disk,) = [line for line in lines if line.startswith("Disk full:")]
        d = base / "base_checkpoints" / TAG
        latest = ck.find_latest_step(str(d))
        assert latest is not None and latest >= 1
        assert re.fullmatch(rf"Disk full: No space left on device while writing checkpoint step {latest + 1:06d} to "
                            rf"{re.escape(str(d))}; checkpoint step {latest:06d} is intact; .*", disk)
        ck.load_checkpoint(str(d), latest, "cpu")
        assert _leftovers(d) == []
        assert "Traceback" not in err
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
