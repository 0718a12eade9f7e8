"""The chat web service: request validation, a queue of model workers (one per GPU, or one on CPU), SSE streaming.

The HTTP API is upstream nanochat's (2025-11 `scripts/chat_web.py`) so its clients work unchanged:
`GET /` (the page), `GET /health`, `GET /stats`, `POST /chat/completions` streaming `data: {"token": ...}` lines and
then `data: {"done": true}`. Every bad request is a 4xx with `{"detail": "<one line>"}`, never a 500.
"""

import asyncio
import json
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

# upstream's abuse limits (top_k 0 = no top-k filtering, as upstream later allowed; 1-200 as in 2025-11)
MAX_MESSAGES_PER_REQUEST = 500
MAX_MESSAGE_LENGTH = 8000
MAX_TOTAL_CONVERSATION_LENGTH = 32000
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.0, 2.0
MIN_TOP_K, MAX_TOP_K = 0, 200
MIN_MAX_TOKENS, MAX_MAX_TOKENS = 1, 4096
MAX_BODY_BYTES = 1 << 20
ROLES = ("user", "assistant")

PAGE = Path(__file__).with_name("chat_ui.html")
FAULT_TOKEN_DELAY_ENV = "NANOCHAT_FAULT_TOKEN_DELAY_S"  # tests: each sampled token takes this much longer
TOOL_MARKERS = ("<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>")
_MARKER_RE = re.compile("(" + "|".join(re.escape(m) for m in TOOL_MARKERS) + ")")


class BadRequest(Exception):
    """A request the service refuses: HTTP `status` with a one-line `detail`."""

    def __init__(self, detail: str, status: int = 400):
        super().__init__(detail)
        self.detail, self.status = detail, status


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple  # ((role, content), ...)
    temperature: float | None
    top_k: int | None
    max_tokens: int | None


def _number(body: dict, name: str, integer: bool, lo, hi):
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        kind = "an integer" if integer else "a number"
        raise BadRequest(f"{name} must be {kind} between {lo} and {hi}, got {json.dumps(value)[:40]}", 422)
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}, got {value}")
    return int(value) if integer else float(value)


def parse_request(raw: bytes) -> ChatRequest:
    """The request body -> ChatRequest, or BadRequest naming the first problem (upstream's checks and order)."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request body is not valid JSON ({exc}); send "
                         '{"messages": [{"role": "user", "content": "..."}]}', 422) from None
    if not isinstance(body, dict):
        raise BadRequest('the request body must be a JSON object like {"messages": [...]}', 422)
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise BadRequest('"messages" must be a list of {"role": "user"|"assistant", "content": "..."}', 422)
    if not messages:
        raise BadRequest("At least one message is required")
    if len(messages) > MAX_MESSAGES_PER_REQUEST:
        raise BadRequest(f"Too many messages. Maximum {MAX_MESSAGES_PER_REQUEST} messages allowed per request")
    total, parsed = 0, []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise BadRequest(f"Message {i} must be an object with a string role and a string content", 422)
        content = m["content"]
        if not content:
            raise BadRequest(f"Message {i} has empty content")
        if len(content) > MAX_MESSAGE_LENGTH:
            raise BadRequest(f"Message {i} is too long. Maximum {MAX_MESSAGE_LENGTH} characters allowed per message")
        try:
            content.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(f"Message {i} is not valid Unicode text (it holds a lone surrogate)") from None
        total += len(content)
        parsed.append((m["role"], content))
    if total > MAX_TOTAL_CONVERSATION_LENGTH:
        raise BadRequest(f"Total conversation is too long. Maximum {MAX_TOTAL_CONVERSATION_LENGTH} characters allowed")
    for i, (role, _) in enumerate(parsed):
        if role not in ROLES:
            raise BadRequest(f"Message {i} has invalid role {role[:20]!r}. Must be 'user' or 'assistant'")
    return ChatRequest(tuple(parsed),
                       _number(body, "temperature", False, MIN_TEMPERATURE, MAX_TEMPERATURE),
                       _number(body, "top_k", True, MIN_TOP_K, MAX_TOP_K),
                       _number(body, "max_tokens", True, MIN_MAX_TOKENS, MAX_MAX_TOKENS))


def conversation_tokens(tokenizer, messages) -> list[int]:
    """<|bos|>, each turn in its special tokens, then <|assistant_start|> (the model writes the reply). The tool
    markers the page sends back inside an assistant turn become the special tokens the model produced; in a user
    turn everything stays plain text."""
    sp = tokenizer.encode_special
    ids = [tokenizer.get_bos_token_id()]
    for role, content in messages:
        if role == "user":
            ids += [sp("<|user_start|>"), *tokenizer.encode(content), sp("<|user_end|>")]
            continue
        ids.append(sp("<|assistant_start|>"))
        for piece in _MARKER_RE.split(content):
            if piece in TOOL_MARKERS:
                ids.append(sp(piece))
            elif piece:
                ids += tokenizer.encode(piece)
        ids.append(sp("<|assistant_end|>"))
    ids.append(sp("<|assistant_start|>"))
    return ids


@dataclass
class Worker:
    """One model replica on one device; its generations run one at a time on its own thread."""
    index: int
    device: object
    engine: object
    tokenizer: object
    limit: int
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "chat-worker"))
    busy: bool = False
    served: int = 0
    cancelled: int = 0
    tokens: int = 0
    last_tokens: int = 0      # tokens sampled by this worker's most recent request
    last_stopped: str = ""    # why it ended: "done", "max_tokens", "cancelled" or "error"


class WorkerPool:
    """Workers behind an asyncio queue: a request waits for a free worker; a worker goes back to the queue the
    moment its generation thread returns, which a client disconnect makes happen within one token."""

    def __init__(self, workers: list[Worker], max_waiting: int = 256):
        self.workers = workers
        self.max_waiting = max_waiting
        self.waiting = 0
        self.rejected = 0
        self._free: asyncio.Queue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._free = asyncio.Queue()
        for w in self.workers:
            self._free.put_nowait(w)

    @property
    def available(self) -> int:
        return self._free.qsize() if self._free is not None else 0

    async def acquire(self) -> Worker:
        self.waiting += 1
        try:
            worker = await self._free.get()
        finally:
            self.waiting -= 1
        worker.busy = True
        return worker

    def release(self, worker: Worker) -> None:
        worker.busy = False
        self._free.put_nowait(worker)

    def release_when_done(self, worker: Worker, future) -> None:
        """Give the worker back (on the event loop) once its generation `future` has finished."""
        def done(_):
            try:
                self._loop.call_soon_threadsafe(self.release, worker)
            except RuntimeError:  # the loop is closed: the server is shutting down
                pass
        future.add_done_callback(done)

    def shutdown(self) -> None:
        for w in self.workers:
            w.executor.shutdown(wait=False, cancel_futures=True)


def generate_text(worker: Worker, tokens: list[int], max_tokens: int, temperature: float, top_k: int | None,
                  seed: int, emit, stop: threading.Event) -> str:
    """Runs on the worker's thread: sample a reply and emit() each piece of text that is complete UTF-8 (a
    multi-byte character split over tokens is held back until whole). Returns why it stopped."""
    from nanochat.common import eval_autocast
    from nanochat.tokenizer import TextStream

    if getattr(worker.device, "type", None) == "cuda":  # this thread's current device = the worker's GPU
        import torch
        torch.cuda.set_device(worker.device)
    tok = worker.tokenizer
    enders = (tok.encode_special("<|assistant_end|>"), tok.get_bos_token_id())
    stream = TextStream(tok)
    produced, reason = 0, "max_tokens"
    delay = float(os.environ.get(FAULT_TOKEN_DELAY_ENV) or 0)
    with eval_autocast(worker.device):
        for column, _ in worker.engine.generate(tokens, num_samples=1, max_tokens=max_tokens,
                                                temperature=temperature, top_k=top_k or None, seed=seed):
            if delay:
                time.sleep(delay)
            if stop.is_set():
                reason = "cancelled"
                break
            token = column[0]
            if token in enders:
                reason = "done"
                break
            produced += 1
            text = stream.push(token)
            if text:
                emit(text)
    worker.tokens += produced
    worker.last_tokens = produced
    return reason


def sse(payload: dict) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode("utf-8")


@dataclass
class Defaults:
    temperature: float = 0.8
    top_k: int = 50
    max_tokens: int = 512


def create_app(pool: WorkerPool, defaults: Defaults, log=print):
    """The FastAPI app serving `pool` (the caller loads the workers; tests may hand in any)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @asynccontextmanager
    async def lifespan(app):
        pool.start()
        yield
        pool.shutdown()

    app = FastAPI(lifespan=lifespan, title="nanochat", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])
    tokenizer = pool.workers[0].tokenizer
    limit = min(w.limit for w in pool.workers)

    @app.exception_handler(BadRequest)
    async def bad_request(_request, exc: BadRequest):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc):
        return JSONResponse({"detail": f"invalid request: {exc.errors()[:1]}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc):
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code)

    @app.get("/")
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "ready": bool(pool.workers), "num_gpus": len(pool.workers),
                "available_workers": pool.available, "waiting": pool.waiting}

    @app.get("/stats")
    async def stats():
        return {"total_workers": len(pool.workers), "available_workers": pool.available,
                "busy_workers": len(pool.workers) - pool.available, "waiting": pool.waiting,
                "rejected": pool.rejected, "context_tokens": limit,
                "workers": [{"gpu_id": w.index, "device": str(w.device), "busy": w.busy, "served": w.served,
                             "cancelled": w.cancelled, "tokens": w.tokens, "last_tokens": w.last_tokens,
                             "last_stopped": w.last_stopped} for w in pool.workers]}

    @app.post("/chat/completions")
    async def chat_completions(request: Request):
        too_big = BadRequest(f"the request body is larger than {MAX_BODY_BYTES} bytes", 413)
        declared = request.headers.get("content-length") or "0"
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():  # read no more than the cap, whatever the headers said
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise too_big
            chunks.append(chunk)
        raw = b"".join(chunks)
        req = parse_request(raw)
        tokens = conversation_tokens(tokenizer, req.messages)
        room = limit - len(tokens)
        if room < 1:
            raise BadRequest(f"the conversation is {len(tokens)} tokens but this model's context is {limit}; "
                             f"send fewer or shorter messages")
        if pool.waiting >= pool.max_waiting:
            pool.rejected += 1
            return JSONResponse({"detail": f"busy: {pool.waiting} requests are already waiting; retry shortly"},
                                status_code=503, headers={"Retry-After": "5"})
        max_tokens = min(req.max_tokens if req.max_tokens is not None else defaults.max_tokens, room)
        temperature = req.temperature if req.temperature is not None else defaults.temperature
        top_k = req.top_k if req.top_k is not None else defaults.top_k
        log(f"chat request: {len(req.messages)} messages, {len(tokens)} tokens, last: {req.messages[-1][1][:80]!r}")
        return StreamingResponse(_stream(tokens, max_tokens, temperature, top_k), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _stream(tokens, max_tokens, temperature, top_k):
        worker = await pool.acquire()  # cancelled here (client gone while queued): nothing was taken
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        t0 = time.monotonic()

        def emit(text):
            loop.call_soon_threadsafe(pieces.put_nowait, ("token", text))

        def run():
            try:
                reason = generate_text(worker, tokens, max_tokens, temperature, top_k,
                                       random.randint(0, 2 ** 31 - 1), emit, stop)
                worker.last_stopped = reason
                loop.call_soon_threadsafe(pieces.put_nowait, ("end", reason))
            except Exception as exc:  # a model failure ends this reply with an error event, not a dead server
                worker.last_stopped = "error"
                try:
                    loop.call_soon_threadsafe(pieces.put_nowait, ("error", f"{type(exc).__name__}: {exc}"))
                except RuntimeError:
                    pass
            except BaseException:
                worker.last_stopped = "error"
                raise

        future = None
        finished = False
        try:
            future = worker.executor.submit(run)
            pool.release_when_done(worker, future)
            while True:
                kind, value = await pieces.get()
                if kind == "token":
                    yield sse({"token": value, "gpu": worker.index})
                else:  # "end" or "error": the thread has returned; the worker is back before the client hears done
                    finished = True
                    await asyncio.wrap_future(future)
                    if kind == "error":
                        yield sse({"error": value})
                    yield sse({"done": True})
                    return
        finally:
            stop.set()  # a client that went away stops the generation at the next token
            if future is None:
                pool.release(worker)
            elif finished:
                worker.served += 1
            else:
                worker.cancelled += 1
                log(f"chat request cancelled by the client after {time.monotonic() - t0:.1f}s")

    return app
