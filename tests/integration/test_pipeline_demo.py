"""The offline demo pipeline end to end on CPU: demo corpus -> tokenizer -> base -> base eval -> mid -> chat eval
-> SFT -> chat eval -> report.md with every section -> chat_cli -p answers -> chat_web serves the SFT model.
The full cpu-demo profile is `slow`; a smoke variant with tiny iteration counts runs in the default suite."""
import math
import re
import sys
import time

import pytest

from chat_web_helpers import check_serves_sft_model
from pipeline_fixtures import make_base_checkpoint, run_stage

FULL = dict(vocab=4096, max_chars=20_000_000, depth=2, base_iters=200, mid_iters=100, sft_iters=100, save_every=25,
            base_eval_every=50, sample_every=100, eval_problems=None)
SMOKE = dict(vocab=512, max_chars=1_000_000, depth=1, base_iters=4, mid_iters=3, sft_iters=3, save_every=2,
             base_eval_every=2, sample_every=-1, eval_problems=3)


def pipeline(p):
    """The cpu-demo stages (argv as in the roster / nanotui's plan), scaled by the profile p."""
    seq = "--max_seq_len=256"
    stages = [
        ("nanochat.report", ["reset"]),
        ("nanochat.dataset", ["--demo"]),
        ("nanochat.scripts.tok_train", [f"--vocab_size={p['vocab']}", f"--max_chars={p['max_chars']}"]),
        ("nanochat.scripts.base_train", [f"--depth={p['depth']}", seq, "--device_batch_size=8",
                                         "--total_batch_size=8192", f"--num_iterations={p['base_iters']}",
                                         f"--eval_every={p['base_eval_every']}", "--eval_tokens=65536",
                                         "--core_metric_every=-1", f"--sample_every={p['sample_every']}",
                                         f"--save_every={p['save_every']}", "--model_tag=demo", "--run=dummy"]),
        ("nanochat.scripts.base_eval", ["--model_tag=demo", "--demo"]),
        ("nanochat.scripts.mid_train", ["--model_tag=demo", "--device_batch_size=8", seq, "--total_batch_size=8192",
                                        f"--num_iterations={p['mid_iters']}", f"--save_every={p['save_every']}",
                                        "--demo", "--run=dummy"]),
        ("nanochat.scripts.chat_eval", ["-i", "mid", "--model_tag=demo", "--demo"]),
        ("nanochat.scripts.chat_sft", ["--model_tag=demo", "--device_batch_size=4",
                                       f"--num_iterations={p['sft_iters']}", f"--save_every={p['save_every']}",
                                       "--demo", "--run=dummy"]),
        ("nanochat.scripts.chat_eval", ["-i", "sft", "--model_tag=demo", "--demo"]),
        ("nanochat.report", ["generate"]),
    ]
    if p["eval_problems"]:
        stages = [(m, a + [f"--max_problems={p['eval_problems']}"] if m == "nanochat.scripts.chat_eval" else a)
                  for m, a in stages]
    return stages


def run_pipeline(p, base_dir, tmp_path):
    t0 = time.time()
    walls = []
    for module, args in pipeline(p):
        out = run_stage(module, *args, timeout=1200, cwd=str(tmp_path))
        walls.append((module.rsplit(".", 1)[-1], out.wall))
        print(f"[{time.time() - t0:7.1f}s] {module} done in {out.wall:.1f}s (exit {out.returncode})", file=sys.stderr,
              flush=True)
        assert out.returncode == 0, f"{module} {args} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        if module == "nanochat.scripts.chat_sft":
            losses = [float(v) for v in re.findall(r"Training loss: ([^|]+)\|", out.stdout)]
            assert len(losses) == p["sft_iters"] and all(math.isfinite(v) for v in losses), out.stdout[-2000:]
        if module == "nanochat.scripts.mid_train":
            assert f"step {p['mid_iters'] - 1:05d}/{p['mid_iters']:05d}" in out.stdout
        if module == "nanochat.scripts.chat_eval":
            assert "ChatCORE metric:" in out.stdout
    report = (base_dir / "report" / "report.md").read_text()
    for section in ("## Tokenizer training", "## Base model training", "## Base model evaluation", "## Base model loss", "## Midtraining", "## Chat evaluation mid",
                    "## Chat SFT", "## Chat evaluation sft", "## Summary", "Total wall clock time"):
        assert section in report, section
    assert "| ChatCORE |" in report
    answer = run_stage("nanochat.scripts.chat_cli", "-i", "sft", "--model_tag=demo", "-p", "Who are you?",
                       "--max_tokens=40", "-t", "0", cwd=str(tmp_path))
    assert answer.returncode == 0 and answer.stdout.strip(), answer.stderr[-2000:]
    web_reply = check_serves_sft_model(base_dir, cwd=str(tmp_path))  # the browser chat serves the same model
    print(f"chat_web reply: {web_reply[:200]!r}", file=sys.stderr)
    total = time.time() - t0
    print("\nstage wall times: " + ", ".join(f"{name} {w:.1f}s" for name, w in walls), file=sys.stderr)
    print(f"demo pipeline wall time: {total:.1f}s; chat_cli answer: {answer.stdout.strip()[:200]!r}",
          file=sys.stderr)
    return report, answer.stdout, total


def test_chat_stages_smoke(base_dir, tmp_path):
    """Default suite: the stages after base training, on a tiny random base model (no corpus needed)."""
    make_base_checkpoint(base_dir, seq_len=128)
    for module, args in [
        ("nanochat.report", ["reset"]),
        ("nanochat.scripts.mid_train", ["--model_tag=demo", "--device_batch_size=4", "--max_seq_len=128",
                                        "--total_batch_size=1024", "--num_iterations=2", "--demo"]),
        ("nanochat.scripts.chat_sft", ["--model_tag=demo", "--device_batch_size=4", "--target_examples_per_step=8",
                                       "--num_iterations=2", "--demo"]),
        ("nanochat.scripts.chat_eval", ["-i", "sft", "--model_tag=demo", "--demo", "--max_problems=2",
                                        "--max_new_tokens=8"]),
        ("nanochat.report", ["generate"]),
    ]:
        out = run_stage(module, *args, cwd=str(tmp_path))
        assert out.returncode == 0, f"{module}: {out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    report = (base_dir / "report" / "report.md").read_text()
    for section in ("## Midtraining", "## Chat SFT", "## Chat evaluation sft", "| ChatCORE |", "| SpellingBee |"):
        assert section in report
    answer = run_stage("nanochat.scripts.chat_cli", "-p", "Who are you?", "--max_tokens=8", cwd=str(tmp_path))
    assert answer.returncode == 0 and answer.stdout.strip()


@pytest.mark.timeout(1200)
def test_demo_pipeline_smoke(base_dir, tmp_path):
    """Every stage of the demo profile with tiny iteration counts (about 35 s on an idle 2-core machine)."""
    run_pipeline(SMOKE, base_dir, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_demo_pipeline_full(base_dir, tmp_path):
    report, answer, total = run_pipeline(FULL, base_dir, tmp_path)
    print(report, file=sys.stderr)
    for prompt in ("How many r are in strawberry?", "What is 12 + 30?", "Spell the word: window"):
        out = run_stage("nanochat.scripts.chat_cli", "-p", prompt, "--max_tokens=60", "-t", "0", cwd=str(tmp_path))
        print(f"chat_cli -p {prompt!r} -> {out.stdout.strip()!r}", file=sys.stderr)
