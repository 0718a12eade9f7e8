"""Helpers for the chat_web tests: a tiny chat checkpoint, a chat_web server process on a free port, an SSE reader."""
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from urllib.parse import urlsplit

import torch

from nanochat.checkpoint import save_checkpoint
from nanochat.gpt import GPT, GPTConfig
from pipeline_fixtures import make_tokenizer


def make_chat_checkpoint(base_dir, tag="demo", seq_len=512, n_embd=64, endless=True, seed=0, step=0, run_id=None):
    """A tokenizer plus a random 1-layer model committed as chatsft_checkpoints/<tag> `step` (of run `run_id`).

    endless: the special tokens are made (nearly) impossible to sample, so a reply runs until max_tokens or the
    client goes away (blocks start as the identity, so the final hidden state is the normed embedding: a large
    shared component in dimension 0 meets a negative lm_head weight on every special token)."""
    tok = make_tokenizer(base_dir)
    torch.manual_seed(seed)
    config = GPTConfig(sequence_len=seq_len, vocab_size=tok.get_vocab_size(), n_layer=1, n_head=1, n_kv_head=1,
                       n_embd=n_embd)
    model = GPT(config)
    model.init_weights()
    if endless:
        with torch.no_grad():
            model.transformer.wte.weight[:, 0] += 8.0
            specials = [tok.encode_special(name) for name in tok.get_special_tokens()]
            model.lm_head.weight[specials, 0] = -3.0
    meta = {"model_config": asdict(config), "stage": "sft", **({"run_id": run_id} if run_id else {})}
    save_checkpoint(os.path.join(base_dir, "chatsft_checkpoints", tag), step, model.state_dict(), None, meta,
                    keep_last=0, quiet=True)
    return tok, config


class ChatWeb:
    """`python -m nanochat.scripts.chat_web --port 0 ...` as a child process; .url once it serves."""

    def __init__(self, *args, env=None, cwd=None, timeout=120):
        full_env = dict(os.environ, **(env or {}))
        self.proc = subprocess.Popen([sys.executable, "-m", "nanochat.scripts.chat_web", "--port", "0",
                                      "--device_type", "cpu", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=full_env, cwd=cwd)
        self.lines: list[str] = []
        self.url = None
        ready = threading.Event()

        def read():
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                if "chat_web: serving " in line:
                    self.url = line.split("serving ", 1)[1].split()[0]
                    ready.set()
            ready.set()
        threading.Thread(target=read, daemon=True).start()
        ready.wait(timeout)
        if self.url is None:
            self.stop()
            raise AssertionError("chat_web did not start:\n" + "\n".join(self.lines[-30:]))
        parts = urlsplit(self.url)
        self.host, self.port = parts.hostname, parts.port

    def conn(self, timeout=60):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def get_json(self, path):
        c = self.conn()
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, json.loads(r.read())
        finally:
            c.close()

    def post(self, body, raw=None):
        """POST /chat/completions; returns (status, headers, events or error body)."""
        c = self.conn()
        try:
            data = raw if raw is not None else json.dumps(body).encode()
            c.request("POST", "/chat/completions", body=data, headers={"Content-Type": "application/json"})
            r = c.getresponse()
            if r.status != 200:
                return r.status, dict(r.getheaders()), json.loads(r.read())
            return r.status, dict(r.getheaders()), list(read_events(r))
        finally:
            c.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def read_events(response):
    """Yield the JSON payload of each `data: ...` event of an SSE response as it arrives."""
    for raw in response:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            continue
        assert line.startswith("data: "), line
        yield json.loads(line[6:])


def wait_for(predicate, timeout=10.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def check_serves_sft_model(base_dir, cwd=None) -> str:
    """chat_web on the newest SFT checkpoint of `base_dir`: the page, /health, a streamed reply ending with the
    done marker, and a 4xx for a malformed request. Returns the reply."""
    srv = ChatWeb("-i", "sft", env={"NANOCHAT_BASE_DIR": str(base_dir)}, cwd=cwd)
    try:
        c = srv.conn()
        c.request("GET", "/")
        r = c.getresponse()
        assert r.status == 200 and "<title>nanochat</title>" in r.read().decode()
        c.close()
        status, health = srv.get_json("/health")
        assert status == 200 and health["ready"] is True
        status, _, events = srv.post({"messages": [{"role": "user", "content": "Who are you?"}],
                                      "max_tokens": 24, "temperature": 0})
        assert status == 200 and events[-1] == {"done": True}, events
        status, _, body = srv.post(None, raw=b'{"messages": "hi"}')
        assert 400 <= status < 500 and body["detail"], (status, body)
        return "".join(e.get("token", "") for e in events)
    finally:
        srv.stop()
