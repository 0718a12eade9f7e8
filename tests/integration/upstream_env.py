"""Run upstream karpathy/nanochat offline on CPU for tests: a snapshot exported with `git archive`, its own venv,
an offline corpus (our demo corpus in upstream's parquet layout) and upstream's tokenizer, all cached.

The snapshot is a git directory (mirror or bare clone) named by NANOTUI_UPSTREAM_MIRROR, else looked for at
`<this checkout>/../.mirror/karpathy+nanochat/repo`; tests skip with the reason when it is absent. The cache
(NANOTUI_UPSTREAM_CACHE, default ~/.cache/nanotui-upstream) holds the venv (torch==2.13.0 + upstream's deps, built
on first use), the corpus and one tokenizer per revision. Upstream's code is exported per test into a temporary
directory and run there, never copied into this repository or edited: faults come from tests/fixtures/upstream_hook.
"""
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HOOK_DIR = REPO / "tests" / "fixtures" / "upstream_hook"
DEPS = ["numpy", "tiktoken", "rustbpe", "pyarrow", "wandb", "psutil", "filelock", "pyyaml", "jinja2", "requests",
        "tokenizers"]
REV_2025_11 = "f1683c5"     # the 2025-11 configurator CLI
TOK_VOCAB = 1024


@dataclass
class Upstream:
    python: str        # the upstream venv's interpreter
    src: Path          # exported tree (cwd for `python -m scripts.base_train`)
    base_dir: Path     # NANOCHAT_BASE_DIR for this test: corpus + tokenizer linked in, checkpoints and runs inside
    sha: str
    argparse: bool     # True: 2026 dashes; False: 2025-11 configurator

    def env(self, **extra) -> dict:
        e = dict(os.environ, NANOCHAT_BASE_DIR=str(self.base_dir), WANDB_MODE="disabled", TORCHDYNAMO_DISABLE="1",
                 PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", NANOTUI_PLAIN="1",
                 PYTHONPATH=os.pathsep.join([str(HOOK_DIR), str(REPO)]))
        e.update({k: str(v) for k, v in extra.items()})
        return e

    def nanotui(self, *args, env=None, timeout=120):
        """`nanotui ARGS` run from the exported tree (as a user would from their upstream checkout)."""
        return subprocess.run([sys.executable, "-m", "nanotui.cli", *args], capture_output=True, text=True,
                              timeout=timeout, cwd=self.src, env=env or self.env(), stdin=subprocess.DEVNULL)


def mirror() -> Path | None:
    given = os.environ.get("NANOTUI_UPSTREAM_MIRROR")
    path = Path(given) if given else REPO.parent / ".mirror" / "karpathy+nanochat" / "repo"
    return path if (path / "HEAD").exists() or (path / ".git").exists() else None


def cache_dir() -> Path:
    return Path(os.environ.get("NANOTUI_UPSTREAM_CACHE") or Path.home() / ".cache" / "nanotui-upstream")


def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({r.returncode}): {(r.stdout + r.stderr)[-2000:]}")
    return r


def _venv(cache: Path) -> str:
    py = cache / "venv" / "bin" / "python"
    if not py.exists():
        _run([sys.executable, "-m", "venv", str(cache / "venv")])
        _run([str(py), "-m", "pip", "install", "-q", "torch==2.13.0"], timeout=3600)
    probe = "import torch, " + ", ".join(d.replace("pyyaml", "yaml") for d in DEPS)
    if subprocess.run([str(py), "-c", probe], capture_output=True).returncode != 0:
        _run([str(py), "-m", "pip", "install", "-q", *DEPS], timeout=3600)
    return str(py)


def _export(git_dir: Path, rev: str, dest: Path) -> str:
    sha = _run(["git", "-C", str(git_dir), "rev-parse", "--short=7", f"{rev}^{{commit}}"]).stdout.strip()
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.Popen(["git", "-C", str(git_dir), "archive", sha], stdout=subprocess.PIPE)
    _run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout)
    archive.wait()
    return sha


def _corpus(cache: Path) -> Path:
    data = cache / "corpus" / "base_data"
    if not (data / "demo_corpus.json").exists():
        env = dict(os.environ, NANOCHAT_BASE_DIR=str(cache / "corpus"), PYTHONPATH=str(REPO))
        _run([sys.executable, "-m", "nanochat.dataset", "--demo", "--max-mb", "4"], env=env, cwd=REPO, timeout=600)
    return data


def _tokenizer(cache: Path, py: str, src: Path, sha: str, argparse: bool, corpus: Path) -> Path:
    base = cache / f"tok_{sha}"
    tok = base / "tokenizer"
    if not (tok / "tokenizer.pkl").exists():
        base.mkdir(parents=True, exist_ok=True)
        if not (base / "base_data").exists():
            (base / "base_data").symlink_to(corpus)
        flags = [f"--vocab-size={TOK_VOCAB}", "--max-chars=3000000"] if argparse else \
            [f"--vocab_size={TOK_VOCAB}", "--max_chars=3000000"]
        _run([py, "-m", "scripts.tok_train", *flags], cwd=src, env=dict(os.environ, NANOCHAT_BASE_DIR=str(base)),
             timeout=600)
    return tok


def upstream(rev: str, tmp_path: Path) -> Upstream:
    """An upstream revision ready to run in tmp_path, or pytest.skip with the reason."""
    git_dir = mirror()
    if git_dir is None:
        pytest.skip("no karpathy/nanochat snapshot: set NANOTUI_UPSTREAM_MIRROR to its git directory")
    if subprocess.run(["git", "-C", str(git_dir), "rev-parse", "--verify", "-q", f"{rev}^{{commit}}"],
                      capture_output=True).returncode != 0:
        pytest.skip(f"revision {rev} is not in the snapshot at {git_dir}")
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    py = _venv(cache)
    src = tmp_path / "upstream"
    sha = _export(git_dir, rev, src)
    argparse = "add_argument" in (src / "scripts" / "base_train.py").read_text()
    corpus = _corpus(cache)
    tok = _tokenizer(cache, py, src, sha, argparse, corpus)
    base = tmp_path / "base"
    base.mkdir()
    (base / "base_data").symlink_to(corpus)
    (base / "tokenizer").symlink_to(tok)
    return Upstream(python=py, src=src, base_dir=base, sha=sha, argparse=argparse)
