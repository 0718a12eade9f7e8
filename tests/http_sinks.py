"""Local HTTP endpoints on 127.0.0.1 for notification tests: one that records POST bodies, one that accepts
connections and never answers, and a port where nothing listens (connection refused)."""
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Sink:
    """Records each POST: (path, headers, body text). Use as a context manager; `.url` is its address."""

    def __init__(self, status=200):
        self.posts = []
        self.got = threading.Condition()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode("utf-8")
                with sink.got:
                    sink.posts.append((self.path, dict(self.headers), body))
                    sink.got.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/nanotui-test"

    def bodies(self):
        return [b for _p, _h, b in self.posts]

    def wait(self, n, timeout=10):
        with self.got:
            self.got.wait_for(lambda: len(self.posts) >= n, timeout)
        return self.bodies()

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *a):
        self.server.shutdown()
        self.server.server_close()


class Hanging:
    """Accepts TCP connections and never reads or answers (a stuck endpoint)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/stuck"
        self.conns = []
        self._stop = False

    def _accept(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
                self.conns.append(c)
            except OSError:
                return

    def __enter__(self):
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *a):
        self._stop = True
        for c in self.conns:
            c.close()
        self.sock.close()


def refusing_url():
    """A URL on a port where nothing listens: connecting is refused at once."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/nobody"
