"""Shard downloader against a real HTTP server on 127.0.0.1: normal files, a connection dropped mid-file, 404,
500-then-ok and always-500 — complete files only, clear messages, no partial file ever named *.parquet."""
import http.server
import io
import os
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat import dataset

SHARDS = (0, 1, 1822)   # what `-n 2` fetches: train shards 0 and 1, then the pinned validation shard


def _parquet_bytes(index):
    buf = io.BytesIO()
    texts = [f"shard {index} document {i}: " + "educational text about rivers and energy. " * 30 for i in range(300)]
    pq.write_table(pa.table({"text": texts}), buf, row_group_size=1024)
    return buf.getvalue()


class ShardServer:
    """Serves /<scenario>/shard_xxxxx.parquet; per-file behaviours are set in `rules` by name:
    "drop_once" (half the body, then the connection closes; fine afterwards), "404", "500_once", "500",
    "hang" (half the body, then waits for `release`)."""

    def __init__(self):
        self.files = {dataset.shard_name(i): _parquet_bytes(i) for i in SHARDS}
        self.rules, self.requests = {}, {}
        self.release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                count = server.requests[name] = server.requests.get(name, 0) + 1
                rule = server.rules.get(name)
                body = server.files.get(name)
                if body is None or rule == "404":
                    return self._status(404)
                if rule == "500" or (rule == "500_once" and count == 1):
                    return self._status(500)
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if rule == "drop_once" and count == 1 or rule == "hang":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    if rule == "hang":
                        server.release.wait(30)
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def _status(self, code):
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = ShardServer()
    yield s
    s.close()


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setenv("NANOCHAT_DOWNLOAD_BACKOFF", "0.01")
    monkeypatch.setenv("NANOCHAT_DOWNLOAD_TIMEOUT", "10")


def _data_files(base_dir):
    d = base_dir / "base_data"
    return sorted(os.listdir(d)) if d.exists() else []


def _assert_only_complete(base_dir, server, expected):
    names = _data_files(base_dir)
    assert names == sorted(dataset.shard_name(i) for i in expected), names   # no temp files left behind
    for name in names:
        assert (base_dir / "base_data" / name).read_bytes() == server.files[name]


def _download(server, *extra):
    return dataset.main(["-n", "2", "-w", "3", "--base-url", server.url, *extra])


def test_normal_download_then_rerun_skips(base_dir, server, fast_retries, capsys):
    assert _download(server) == 0
    _assert_only_complete(base_dir, server, SHARDS)
    out = capsys.readouterr().out
    assert "validation shard shard_01822.parquet" in out and "3 downloaded" in out
    assert server.requests == {dataset.shard_name(i): 1 for i in SHARDS}

    assert _download(server) == 0
    assert "3 already complete" in capsys.readouterr().out
    assert server.requests == {dataset.shard_name(i): 1 for i in SHARDS}   # nothing fetched again


def test_connection_dropped_mid_file_is_retried(base_dir, server, fast_retries, capsys):
    server.rules["shard_00001.parquet"] = "drop_once"
    assert _download(server) == 0
    _assert_only_complete(base_dir, server, SHARDS)
    assert server.requests["shard_00001.parquet"] == 2
    assert "retry shard_00001.parquet: attempt 1/5 failed" in capsys.readouterr().out


def test_dropped_connection_with_no_retries_left_leaves_no_partial_file(base_dir, server, fast_retries, capsys):
    server.rules["shard_00000.parquet"] = "drop_once"
    assert _download(server, "--attempts", "1") == 1
    _assert_only_complete(base_dir, server, (1, 1822))
    assert "shard_00000.parquet: gave up after 1 attempts" in capsys.readouterr().err


def test_404_fails_at_once_with_a_clear_line(base_dir, server, fast_retries, capsys):
    server.rules["shard_01822.parquet"] = "404"
    assert _download(server) == 1
    _assert_only_complete(base_dir, server, (0, 1))
    assert server.requests["shard_01822.parquet"] == 1          # no retry storm on a 404
    err = capsys.readouterr().err
    assert "FAILED shard_01822.parquet: HTTP 404" in err and "check --base-url" in err
    assert "1 of 3 shards could not be downloaded: shard_01822.parquet" in err


def test_500_then_ok_is_retried_and_always_500_gives_up(base_dir, server, fast_retries, capsys):
    server.rules["shard_00000.parquet"] = "500_once"
    server.rules["shard_00001.parquet"] = "500"
    assert _download(server, "--attempts", "3") == 1
    _assert_only_complete(base_dir, server, (0, 1822))
    assert server.requests["shard_00000.parquet"] == 2
    assert server.requests["shard_00001.parquet"] == 3
    captured = capsys.readouterr()
    assert "retry shard_00000.parquet: attempt 1/3 failed (HTTP 500" in captured.out
    assert "shard_00001.parquet: gave up after 3 attempts; last error: HTTP 500" in captured.err


def test_partial_download_is_never_named_parquet(base_dir, server, fast_retries):
    server.rules["shard_00000.parquet"] = "hang"
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("rc", _download(server, "-w", "1", "--attempts", "1")))
    worker.start()
    deadline = time.time() + 20
    while time.time() < deadline and not any(".tmp-" in n for n in _data_files(base_dir)):
        time.sleep(0.02)
    names = _data_files(base_dir)
    assert any(n.startswith("shard_00000.parquet.tmp-") for n in names), names
    assert "shard_00000.parquet" not in names
    server.release.set()
    worker.join(30)
    assert result["rc"] == 1
    assert "shard_00000.parquet" not in _data_files(base_dir)
    assert not [n for n in _data_files(base_dir) if ".tmp-" in n]


def test_truncated_existing_file_is_replaced(base_dir, server, fast_retries):
    data_dir = base_dir / "base_data"
    data_dir.mkdir()
    (data_dir / "shard_00000.parquet").write_bytes(server.files["shard_00000.parquet"][:1000])
    assert _download(server) == 0
    _assert_only_complete(base_dir, server, SHARDS)


def test_cli_exit_codes_and_env_url(base_dir, server):
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(base_dir), NANOCHAT_DATA_URL=server.url,
               NANOCHAT_DOWNLOAD_BACKOFF="0.01")
    server.rules["shard_00001.parquet"] = "404"
    run = subprocess.run([sys.executable, "-m", "nanochat.dataset", "-n", "2"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 1 and "HTTP 404" in run.stderr and "Traceback" not in run.stderr
    _assert_only_complete(base_dir, server, (0, 1822))
    for bad in (["-n", "0"], ["-n", "abc"], ["-n", "2", "--base-url", "ftp://x"], ["--bogus"], ["-n", "2", "-w", "0"]):
        run = subprocess.run([sys.executable, "-m", "nanochat.dataset", *bad], env=env, capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 2, bad
        assert [line for line in run.stderr.splitlines() if line.strip()][-1].startswith("error: ")
        assert "Traceback" not in run.stderr


# ---------------------------------------------------------------------------------------------------------------------
# identity conversations (upstream's speedrun fetches them with curl before midtraining; ours with --identity)

def _identity_lines(n):
    import json
    return "".join(json.dumps([{"role": "user", "content": f"who are you {i}?"},
                               {"role": "assistant", "content": f"I am nanochat ({i})."}]) + "\n" for i in range(n))


class IdentityServer:
    """Serves /identity.jsonl with a behaviour per `mode`: "ok", "404", "html" (a 200 page that is not JSONL),
    "500_once" (500, then ok)."""

    def __init__(self, body):
        self.body, self.mode, self.requests = body.encode(), "ok", 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests += 1
                if server.mode == "404" or (server.mode == "500_once" and server.requests == 1):
                    self.send_response(404 if server.mode == "404" else 500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = b"<html>rate limited</html>" if server.mode == "html" else server.body
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/identity.jsonl"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def identity_server(monkeypatch):
    srv = IdentityServer(_identity_lines(1000))
    monkeypatch.setenv("NANOCHAT_IDENTITY_URL", srv.url)
    yield srv
    srv.close()


def test_identity_download_is_upstreams_file_read_by_mid_and_sft(base_dir, identity_server, fast_retries, capsys):
    assert dataset.IDENTITY_URL == "https://karpathy-public.s3.us-west-2.amazonaws.com/identity_conversations.jsonl"
    assert dataset.main(["--identity"]) == 0
    dest = base_dir / "identity_conversations.jsonl"
    assert "Identity conversations: 1,000 in" in capsys.readouterr().out
    from nanochat.tasks.identity import IdentityConversations
    assert len(IdentityConversations()) == 1000  # the default for real (non-demo) runs
    assert dataset.main(["--identity"]) == 0 and identity_server.requests == 1  # a valid copy is kept
    dest.write_text(_identity_lines(3)[:-20])  # a truncated copy is fetched again
    assert dataset.main(["--identity"]) == 0 and identity_server.requests == 2
    assert len(IdentityConversations()) == 1000


def test_identity_download_failures_leave_no_file(base_dir, identity_server, fast_retries, capsys):
    identity_server.mode = "404"
    assert dataset.main(["--identity"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("FAILED identity conversations: HTTP 404") and "NANOCHAT_IDENTITY_FILE" in err
    identity_server.mode = "html"
    assert dataset.main(["--identity", "--attempts", "2"]) == 1
    assert "not identity conversations JSONL" in capsys.readouterr().err
    assert os.listdir(base_dir) == []
    identity_server.mode = "500_once"
    identity_server.requests = 0
    assert dataset.main(["--identity"]) == 0 and identity_server.requests == 2


def test_identity_download_with_shards_in_one_command(base_dir, server, identity_server, fast_retries):
    assert dataset.main(["-n", "2", "--identity", "--base-url", server.url]) == 0
    assert (base_dir / "identity_conversations.jsonl").exists()
    assert len(_data_files(base_dir)) == 3
