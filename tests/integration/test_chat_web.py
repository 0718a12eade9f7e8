"""chat_web over real HTTP (one server process on a tiny CPU checkpoint): the page, /health, /stats, a streamed
reply with a done marker, upstream's validation as 4xx (never 500), 8 concurrent requests all answered, a client
that disconnects mid-stream frees the worker at once; and the page in a real headless browser."""
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from chat_web_helpers import ChatWeb, make_chat_checkpoint, read_events, wait_for
from pipeline_fixtures import run_stage

HI = {"messages": [{"role": "user", "content": "What is 12 + 30?"}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("chatweb") / "base"
    base.mkdir()
    make_chat_checkpoint(base)
    # 5 ms a token: a reply of the whole context (~500 tokens) outlasts a disconnect on however fast a machine
    srv = ChatWeb("--max_tokens", "32", env={"NANOCHAT_BASE_DIR": str(base), "NANOCHAT_FAULT_TOKEN_DELAY_S": "0.005"})
    yield srv
    srv.stop()


def test_page_health_and_stats(server):
    c = server.conn()
    c.request("GET", "/")
    r = c.getresponse()
    page = r.read().decode()
    assert r.status == 200 and r.getheader("content-type").startswith("text/html")
    assert "<title>nanochat</title>" in page and "chat/completions" in page
    assert "://" not in page, "the page must work offline: no external URL"
    status, health = server.get_json("/health")
    assert status == 200 and health["status"] == "ok" and health["ready"] is True
    assert health["num_gpus"] == 1 and health["available_workers"] == 1
    status, stats = server.get_json("/stats")
    assert status == 200 and stats["total_workers"] == 1 and stats["workers"][0]["device"] == "cpu"
    assert stats["context_tokens"] == 5120


def test_streams_tokens_then_done(server):
    c = server.conn()
    c.request("POST", "/chat/completions", body=json.dumps({**HI, "max_tokens": 12, "temperature": 0.5,
                                                            "top_k": 10}),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200 and r.getheader("content-type").startswith("text/event-stream")
    events = list(read_events(r))
    c.close()
    assert events[-1] == {"done": True}
    tokens = events[:-1]
    assert tokens and all(set(e) == {"token", "gpu"} and e["token"] and e["gpu"] == 0 for e in tokens)
    _, stats = server.get_json("/stats")
    assert stats["workers"][0]["last_tokens"] == 12 and stats["workers"][0]["last_stopped"] == "max_tokens"
    # the server default (--max_tokens 32) applies when the request sets none; top_k 0 = whole vocabulary
    status, _, events = server.post({**HI, "top_k": 0, "temperature": 0})
    assert status == 200 and events[-1] == {"done": True}
    assert server.get_json("/stats")[1]["workers"][0]["last_tokens"] == 32


BAD = [
    (b"{not json", 422, "not valid JSON"),
    (b"[1, 2]", 422, "must be a JSON object"),
    (b"{}", 422, '"messages" must be a list'),
    (json.dumps({"messages": []}), 400, "At least one message is required"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}] * 501}), 400, "Too many messages. Maximum 500"),
    (json.dumps({"messages": [{"role": "user", "content": ""}]}), 400, "Message 0 has empty content"),
    (json.dumps({"messages": [{"role": "user", "content": "x" * 8001}]}), 400, "Message 0 is too long"),
    (json.dumps({"messages": [{"role": "user", "content": "x" * 8000}] * 5}), 400, "Total conversation is too long"),
    (json.dumps({"messages": [{"role": "system", "content": "be nice"}]}), 400, "Message 0 has invalid role"),
    (json.dumps({"messages": [{"role": "user"}]}), 422, "Message 0 must be an object"),
    (json.dumps({"messages": ["hi"]}), 422, "Message 0 must be an object"),
    (json.dumps({**HI, "temperature": 2.5}), 400, "temperature must be between 0.0 and 2.0"),
    (json.dumps({**HI, "temperature": -0.1}), 400, "temperature must be between 0.0 and 2.0"),
    (json.dumps({**HI, "temperature": "hot"}), 422, "temperature must be a number"),
    (json.dumps({**HI, "top_k": 201}), 400, "top_k must be between 0 and 200"),
    (json.dumps({**HI, "top_k": 1.5}), 422, "top_k must be an integer"),
    (json.dumps({**HI, "max_tokens": 0}), 400, "max_tokens must be between 1 and 4096"),
    (json.dumps({**HI, "max_tokens": 4097}), 400, "max_tokens must be between 1 and 4096"),
    (json.dumps({**HI, "max_tokens": True}), 422, "max_tokens must be an integer"),
    ('{"messages": [{"role": "user", "content": "\\ud800"}]}', 400, "lone surrogate"),
    (b'{"messages": [{"role": "user", "content": "' + b"x" * (1 << 20) + b'"}]}', 413, "larger than 1048576 bytes"),
    # longer than the model's context (5120 tokens): refused before any worker is taken
    (json.dumps({"messages": [{"role": "user", "content": "q " * 3999}] * 2}), 400, "this model's context is 5120"),
]


@pytest.mark.parametrize("raw,status,detail", BAD, ids=[b[2][:28] for b in BAD])
def test_bad_requests_are_4xx_with_a_clear_detail(server, raw, status, detail):
    got, _, body = server.post(None, raw=raw.encode() if isinstance(raw, str) else raw)
    assert got == status and detail in body["detail"], (got, body)
    assert "\n" not in body["detail"]


def test_wrong_method_and_path_are_4xx(server):
    c = server.conn()
    c.request("GET", "/chat/completions")
    r = c.getresponse()
    assert r.status == 405 and json.loads(r.read())["detail"]
    c.request("GET", "/nope")
    r = c.getresponse()
    assert r.status == 404 and json.loads(r.read())["detail"]
    c.close()


def test_eight_concurrent_requests_are_all_answered(server):
    results = [None] * 8

    def one(i):
        msgs = {"messages": [{"role": "user", "content": f"request {i}"}], "max_tokens": 16}
        results[i] = server.post(msgs)

    before = server.get_json("/stats")[1]["workers"][0]["served"]
    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    seen_waiting = wait_for(lambda: server.get_json("/stats")[1]["waiting"] > 0, timeout=5, interval=0.01)
    for t in threads:
        t.join(120)
    for status, _, events in results:
        assert status == 200 and events[-1] == {"done": True} and len(events) > 1
        assert "".join(e["token"] for e in events[:-1])
    _, stats = server.get_json("/stats")
    assert stats["workers"][0]["served"] - before == 8 and stats["available_workers"] == 1
    assert stats["waiting"] == 0 and stats["rejected"] == 0
    assert seen_waiting, "one CPU worker: the other requests must have queued"


def test_disconnect_mid_stream_frees_the_worker_at_once(server):
    c = server.conn()
    c.request("POST", "/chat/completions", body=json.dumps({**HI, "max_tokens": 4096}),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    events = read_events(r)
    first = [next(events) for _ in range(3)]
    assert all("token" in e for e in first)
    assert server.get_json("/health")[1]["available_workers"] == 0
    t0 = time.monotonic()
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()
    freed = wait_for(lambda: server.get_json("/health")[1]["available_workers"] == 1, timeout=5, interval=0.01)
    took = time.monotonic() - t0
    assert freed, "the worker was not freed after the client went away"
    worker = server.get_json("/stats")[1]["workers"][0]
    assert worker["last_stopped"] == "cancelled" and worker["last_tokens"] < 4096, worker
    assert took < 2.0, took
    # and the next client is served at once
    status, _, events = server.post({**HI, "max_tokens": 4})
    assert status == 200 and events[-1] == {"done": True}


def _open_stream(server, max_tokens):
    c = server.conn()
    c.request("POST", "/chat/completions", body=json.dumps({**HI, "max_tokens": max_tokens}),
              headers={"Content-Type": "application/json"})
    return c


def test_a_queued_client_that_leaves_never_takes_the_worker(server):
    busy = _open_stream(server, 4096)
    events = read_events(busy.getresponse())
    assert "token" in next(events)
    queued = _open_stream(server, 4096)  # waits behind the busy one
    assert wait_for(lambda: server.get_json("/stats")[1]["waiting"] == 1, timeout=5, interval=0.01)
    queued.sock.shutdown(socket.SHUT_RDWR)
    queued.close()
    assert wait_for(lambda: server.get_json("/stats")[1]["waiting"] == 0, timeout=5, interval=0.01)
    before = server.get_json("/stats")[1]["workers"][0]
    busy.sock.shutdown(socket.SHUT_RDWR)
    busy.close()
    assert wait_for(lambda: server.get_json("/health")[1]["available_workers"] == 1, timeout=5, interval=0.01)
    time.sleep(0.3)  # had the queued request taken the worker, it would be busy again by now
    after = server.get_json("/stats")[1]
    assert after["available_workers"] == 1 and after["workers"][0]["cancelled"] == before["cancelled"] + 1
    assert after["workers"][0]["served"] == before["served"]


def test_calculator_markers_in_history_become_special_tokens(server):
    """The page sends the model's tool call back verbatim; the server re-encodes its markers as special tokens."""
    history = {"messages": [{"role": "user", "content": "What is 12 + 30?"},
                            {"role": "assistant", "content": "<|python_start|>12+30<|python_end|>"
                                                             "<|output_start|>42<|output_end|>It is 42."},
                            {"role": "user", "content": "<|python_start|> is just text here"}],
               "max_tokens": 3}
    status, _, events = server.post(history)
    assert status == 200 and events[-1] == {"done": True}


# ---- the command line ---------------------------------------------------------------------------------------------

def test_cli_refusals_are_one_line_exit_2(base_dir):
    out = run_stage("nanochat.scripts.chat_web", "--temperature", "3", timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: argument -t/--temperature: expected a number")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        out = run_stage("nanochat.scripts.chat_web", "--port", str(port), timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr and "--port 0" in out.stderr


@pytest.mark.slow
def test_cli_without_a_checkpoint_says_how_to_make_one(base_dir):
    out = run_stage("nanochat.scripts.chat_web", "--port", "0", "--device_type", "cpu", timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: no checkpoints in") and "chat_sft" in out.stderr


# ---- a real browser ---------------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright for Python is not installed (pip install -e '.[test]')")
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    return sync_playwright


def test_browser_types_a_message_and_sees_the_streamed_reply(server):
    sync_playwright = _playwright()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        try:
            page = browser.new_page()
            external = []
            page.on("request", lambda req: external.append(req.url) if not req.url.startswith(server.url) else None)
            page.goto(server.url)
            page.wait_for_function("document.getElementById('status').textContent.startsWith('ready')")
            page.fill("#input", "What is 12 + 30?")
            page.keyboard.press("Enter")
            page.wait_for_selector(".msg.user")
            # streaming: the reply grows while the stop button is shown, then the button goes back to send
            page.wait_for_function("(() => { const a = document.querySelector('.msg.assistant');"
                                   " return a && a.textContent.length > 0; })()", timeout=30000)
            page.wait_for_selector("#send:not([hidden])", timeout=60000)
            reply = page.text_content(".msg.assistant")
            assert reply and page.text_content(".msg.user") == "What is 12 + 30?"
            assert page.query_selector(".msg.error") is None
            # the calculator's output renders as chips (exercised on a reply the page is given)
            page.evaluate("render(document.querySelector('.msg.assistant'), "
                          "'Sure. <|python_start|>12+30<|python_end|><|output_start|>42<|output_end|> done')")
            chips = page.eval_on_selector_all(".msg.assistant .tool", "els => els.map(e => e.textContent)")
            assert chips == ["calc12+30", "=42"]
            # stop: a long reply is cut off and the worker comes back
            page.fill("#temperature", "1")
            page.fill("#max_tokens", "4096")
            page.evaluate("document.getElementById('input').value = 'tell me a long story'")
            page.click("#send")
            page.wait_for_selector("#stop:not([hidden])")
            page.wait_for_function("document.querySelectorAll('.msg.assistant')[1].textContent.length > 0")
            page.click("#stop")
            page.wait_for_selector(".msg.assistant.stopped", timeout=10000)
            assert wait_for(lambda: server.get_json("/health")[1]["available_workers"] == 1, timeout=5)
            # "New chat" in the middle of a reply: the new conversation starts empty
            page.evaluate("document.getElementById('input').value = 'another long story'")
            page.click("#send")
            page.wait_for_function("document.querySelectorAll('.msg.assistant')[2].textContent.length > 0")
            page.click("#new")
            page.wait_for_selector("#send:not([hidden])", timeout=10000)
            assert page.evaluate("messages.length") == 0 and page.query_selector(".msg") is None
            assert external == [], external
        finally:
            browser.close()


def _rewrite_model_config(base_dir, step, **changes):
    """Edit the committed meta's model_config (the meta is the commit marker; the model file stays as written)."""
    path = base_dir / "chatsft_checkpoints" / "demo" / f"meta_{step:06d}.json"
    meta = json.loads(path.read_text())
    meta["model_config"].update(changes)
    path.write_text(json.dumps(meta))


def test_a_checkpoint_of_another_architecture_is_one_line_not_a_traceback(base_dir):
    """Upstream nanochat's 2026 checkpoints describe a model with `window_pattern` (and other weights): chat_cli and
    chat_web said TypeError with a traceback. Now one line that says what it is; a meta whose shapes do not match
    its weights, likewise."""
    make_chat_checkpoint(base_dir, step=3, endless=False)
    _rewrite_model_config(base_dir, 3, window_pattern="SSSL")
    out = run_stage("nanochat.scripts.chat_cli", "-p", "hi", "--device_type", "cpu", timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("error: checkpoint ") and "does not build" in line and "window_pattern" in line, line
    meta_path = base_dir / "chatsft_checkpoints" / "demo" / "meta_000003.json"
    meta = json.loads(meta_path.read_text())
    del meta["model_config"]["window_pattern"]
    meta["model_config"]["n_embd"] = 128        # the weights are 64 wide
    meta_path.write_text(json.dumps(meta))
    out = run_stage("nanochat.scripts.chat_web", "--port", "0", "--device_type", "cpu", timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("error: checkpoint ") and "does not fit the model its meta describes" in line, line
