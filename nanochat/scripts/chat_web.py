"""Serve a trained chat model in the browser: the chat page plus upstream nanochat's streaming chat API.

`python -m nanochat.scripts.chat_web` listens on http://127.0.0.1:8000/ (GET /, /health, /stats; POST
/chat/completions). One model worker per GPU (`--num_gpus`), or one on CPU, behind a queue."""
import argparse
import os
import socket

from nanochat.common import ArgumentParser, UsageError, autodetect_device_type, run_main


def _number_in(kind, lo, hi):
    """An argparse type: a float or int (`kind`) within [lo, hi], with one line saying what was expected."""
    what = "a number" if kind is float else "an integer"

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} between {lo} and {hi}, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected {what} between {lo} and {hi}, got {text}")
        return value
    return parse


def build_parser():
    from nanochat import chat_server as cs  # no torch before the port is bound: refusals come at once

    p = ArgumentParser(prog="python -m nanochat.scripts.chat_web", description=__doc__)
    p.add_argument("-i", "--source", choices=["sft", "mid"], default="sft", help="which chat model (default sft)")
    p.add_argument("-g", "--model_tag", "--model-tag", dest="model_tag", default=None)
    p.add_argument("-s", "--step", type=_number_in(int, 0, 10 ** 12), default=None)
    p.add_argument("--run_id", "--run-id", dest="run_id", default=None,
                   help="serve this run's newest checkpoint (default: $NANOCHAT_RUN_ID; unset: the newest of any)")
    p.add_argument("-n", "--num_gpus", "--num-gpus", dest="num_gpus", type=_number_in(int, 1, 1024), default=1,
                   help="model workers, one per GPU (CPU/MPS: 1)")
    p.add_argument("-t", "--temperature", type=_number_in(float, cs.MIN_TEMPERATURE, cs.MAX_TEMPERATURE),
                   default=0.8, help="default temperature of a request that sets none (0 = greedy)")
    p.add_argument("-k", "--top_k", "--top-k", dest="top_k", type=_number_in(int, cs.MIN_TOP_K, cs.MAX_TOP_K),
                   default=50, help="default top-k (0 = the whole vocabulary)")
    p.add_argument("-m", "--max_tokens", "--max-tokens", dest="max_tokens",
                   type=_number_in(int, cs.MIN_MAX_TOKENS, cs.MAX_MAX_TOKENS), default=512,
                   help="default reply length cap")
    p.add_argument("-p", "--port", type=_number_in(int, 0, 65535), default=8000, help="0 = any free port")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 serves every interface)")
    p.add_argument("--device_type", "--device-type", dest="device_type", default=None, choices=["cuda", "cpu", "mps"],
                   help="default: cuda, else mps, else cpu")
    p.add_argument("--exit_with_parent", action="store_true",
                   help="stop when the process that started this one exits (the dashboard's chat uses it)")
    p.add_argument("--max_waiting", type=_number_in(int, 1, 100000), default=256,
                   help="requests allowed to wait for a worker; more get 503")
    return p


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads, so a taken port is one clear line at once."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"cannot resolve --host {host!r} ({exc.strerror}); use 127.0.0.1 or 0.0.0.0") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror}); pass another --port "
                         f"(--port 0 picks a free one)") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def load_workers(args):
    """One Worker per GPU (cuda:0..n-1), or one on CPU/MPS, each with the checkpoint loaded."""
    import torch

    from nanochat.chat_server import Worker
    from nanochat.checkpoint import load_model, run_id_from
    from nanochat.common import compute_init
    from nanochat.engine import Engine, context_limit

    device_type = args.device_type or autodetect_device_type()
    if device_type != "cuda" and args.num_gpus > 1:
        raise UsageError(f"--num_gpus {args.num_gpus} needs CUDA GPUs; on {device_type} there is one worker")
    if device_type == "cuda" and args.num_gpus > torch.cuda.device_count():
        raise UsageError(f"--num_gpus {args.num_gpus} but {torch.cuda.device_count()} CUDA GPU(s) are visible")
    compute_init(device_type)
    workers = []
    for i in range(args.num_gpus):
        device = torch.device(f"cuda:{i}") if device_type == "cuda" else torch.device(device_type)
        model, tokenizer, meta = load_model(args.source, device, phase="eval", model_tag=args.model_tag,
                                            step=args.step, run_id=run_id_from(args.run_id))
        workers.append(Worker(i, device, Engine(model, tokenizer), tokenizer, context_limit(model)))
        print(f"worker {i}: {args.source} model step {meta.get('step')} on {device}", flush=True)
    return workers


def main(argv=None):
    args = build_parser().parse_args(argv)
    sock = bind(args.host, args.port)
    try:
        import uvicorn

        from nanochat.chat_server import Defaults, WorkerPool, create_app
    except ImportError as exc:
        raise UsageError(f"chat_web needs fastapi and uvicorn ({exc}); run: pip install -e .") from None
    workers = load_workers(args)
    pool = WorkerPool(workers, max_waiting=args.max_waiting)
    app = create_app(pool, Defaults(args.temperature, args.top_k, args.max_tokens))
    host, port = sock.getsockname()[:2]
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    shown = f"[{shown}]" if ":" in shown else shown
    print(f"defaults: temperature {args.temperature}, top-k {args.top_k}, max tokens {args.max_tokens}; "
          f"context {workers[0].limit} tokens", flush=True)
    print(f"chat_web: serving http://{shown}:{port}/ (Ctrl-C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level=os.environ.get("NANOCHAT_WEB_LOG", "warning"),
                                           timeout_graceful_shutdown=2, lifespan="on"))
    if args.exit_with_parent:
        watch_parent(server)
    server.run(sockets=[sock])
    return 0


def watch_parent(server, interval: float = 1.0) -> None:
    """Ask `server` to shut down once this process's parent has gone (it is re-parented)."""
    import threading
    import time

    parent = os.getppid()

    def watch():
        while not server.should_exit:
            if os.getppid() != parent:
                print("chat_web: the parent process exited; stopping", flush=True)
                server.should_exit = True
                return
            time.sleep(interval)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


if __name__ == "__main__":
    run_main(main)
