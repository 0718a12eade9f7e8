"""Helpers for the pipeline tests: a tiny tokenizer and a random tiny base checkpoint in a base dir, stage runner."""
import os
import subprocess
import sys
import time

import torch

from nanochat.checkpoint import save_checkpoint
from nanochat.gpt import GPT, GPTConfig
from nanochat.tokenizer import Tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog. Spell the word apple: a,p,p,l,e.",
    "How many r are in strawberry? Let me count with Python. The answer is 3.",
    "What is 12 + 30? The calculator says 42. Hello, I am nanochat, a small language model.",
    "Multiple Choice question: Which word starts with the letter b? Respond only with the letter.",
] * 20


def make_tokenizer(base_dir, vocab_size=400):
    tok = Tokenizer.train_from_iterator(iter(TEXTS), vocab_size)
    d = os.path.join(base_dir, "tokenizer")
    tok.save(d)
    tok.save_token_bytes(d)
    return tok


def make_base_checkpoint(base_dir, tag="demo", n_layer=1, n_embd=64, seq_len=64, seed=0):
    """A tokenizer plus a randomly initialised base model committed as base_checkpoints/<tag>/ step 0."""
    tok = make_tokenizer(base_dir)
    torch.manual_seed(seed)
    config = GPTConfig(sequence_len=seq_len, vocab_size=tok.get_vocab_size(), n_layer=n_layer, n_head=1,
                       n_kv_head=1, n_embd=n_embd)
    model = GPT(config)
    model.init_weights()
    from dataclasses import asdict
    save_checkpoint(os.path.join(base_dir, "base_checkpoints", tag), 0, model.state_dict(), None,
                    {"model_config": asdict(config), "stage": "base"}, quiet=True)
    return tok, config


def run_stage(module, *args, env=None, timeout=300, cwd=None):
    """Run `python -m <module> args...`; returns CompletedProcess with .wall (seconds)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=full_env,
                         timeout=timeout, cwd=cwd)
    out.wall = time.time() - t0
    return out
