"""nanochat entry points: a user mistake is one `error: ...` line, exit 2, no traceback, nothing written."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_fixtures import make_base_checkpoint

REPO = Path(__file__).resolve().parents[2]
LONG_PROMPT = "hello world " * 400  # far beyond the tiny model's context (10 x 64 positions)


def run_script(module, *args, base, timeout=120):
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(base), PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO, stdin=subprocess.DEVNULL)


def assert_one_line_usage_error(r, *words):
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    for w in words:
        assert w in lines[0], (w, lines[0])


def tree(base):
    return sorted(str(p.relative_to(base)) for p in Path(base).rglob("*"))


@pytest.fixture(scope="module")
def trained_base(tmp_path_factory):
    """A base dir with a tokenizer and one tiny model committed as base and as mid checkpoint `demo` step 0."""
    base = tmp_path_factory.mktemp("bad_input_base")
    make_base_checkpoint(str(base), tag="demo")
    shutil.copytree(base / "base_checkpoints", base / "mid_checkpoints")
    return base


@pytest.mark.parametrize("module,args,words", [
    ("nanochat.scripts.mid_train", ["--demo"], ["no checkpoints", "nanochat.scripts.base_train"]),
    ("nanochat.scripts.chat_cli", ["-i", "mid", "-p", "hi"], ["no checkpoints", "nanochat.scripts.mid_train"]),
    ("nanochat.scripts.base_train", ["--model_tag=../../escape"], ["--model_tag", "plain directory name"]),
])
def test_missing_prerequisites_and_bad_tags(tmp_path, module, args, words):
    base = tmp_path / "empty_base"
    base.mkdir()
    assert_one_line_usage_error(run_script(module, *args, base=base), *words)
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize("module,args,words", [
    ("nanochat.scripts.chat_cli", ["-i", "mid", "-p", ""], ["non-empty prompt"]),
    ("nanochat.scripts.chat_cli", ["-i", "mid", "-p", "   "], ["non-empty prompt"]),
    ("nanochat.scripts.chat_cli", ["-i", "mid", "-k", "0", "-p", "hi"], ["--top_k", ">= 1"]),
    ("nanochat.scripts.chat_cli", ["-i", "mid", "-t", "-1", "-p", "hi"], ["--temperature", ">= 0"]),
    ("nanochat.scripts.chat_cli", ["-i", "mid", "--max_tokens", "-1", "-p", "hi"], ["--max_tokens"]),
    ("nanochat.scripts.chat_cli", ["-i", "mid", "-p", LONG_PROMPT], ["context of 640 tokens"]),
    ("nanochat.scripts.chat_cli", ["-i", "mid", "--model_tag", "../x", "-p", "hi"], ["plain directory name"]),
    ("nanochat.scripts.chat_cli", ["-i", "mid", "--model_tag", "nope", "-p", "hi"], ["model tags there: demo"]),
    ("nanochat.scripts.chat_cli", ["-i", "mid", "--step", "99", "-p", "hi"], ["step 99", "valid steps: 0"]),
    ("nanochat.scripts.chat_eval", ["-i", "mid", "--demo", "--batch_size", "0"], ["--batch_size"]),
    ("nanochat.scripts.chat_eval", ["-i", "mid", "--demo", "--max_problems", "-1"], ["--max_problems"]),
    ("nanochat.scripts.base_eval", ["--demo", "--eval_tokens", "0"], ["--eval_tokens"]),
    ("nanochat.scripts.base_eval", ["--demo", "--step", "-1"], ["--step"]),
])
def test_bad_flags_with_a_trained_model(trained_base, module, args, words):
    before = tree(trained_base)
    assert_one_line_usage_error(run_script(module, *args, base=trained_base), *words)
    assert tree(trained_base) == before


def test_chat_cli_interactive_ends_cleanly_on_eof(trained_base):
    r = run_script("nanochat.scripts.chat_cli", "-i", "mid", "--max_tokens", "4", base=trained_base)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "User:" in r.stdout
