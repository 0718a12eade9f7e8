"""GPU check of chat_web: one worker per visible GPU (bf16 autocast), concurrent streamed replies all answered,
a disconnect frees its GPU worker. Run on a CUDA machine: pytest -m gpu tests/gpu/test_gpu_chat_web.py -s"""
import json
import socket
import sys
import threading
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from chat_web_helpers import ChatWeb, make_chat_checkpoint, read_events, wait_for  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(240, func_only=True),
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
HI = {"messages": [{"role": "user", "content": "What is 12 + 30?"}]}


def test_one_worker_per_gpu_streams_and_frees_on_disconnect(base_dir):
    make_chat_checkpoint(base_dir, n_embd=128)
    n = torch.cuda.device_count()
    srv = ChatWeb("--num_gpus", str(n), "--device_type", "cuda", env={"NANOCHAT_BASE_DIR": str(base_dir)})
    try:
        _, stats = srv.get_json("/stats")
        assert [w["device"] for w in stats["workers"]] == [f"cuda:{i}" for i in range(n)]
        results = [None] * (4 * n)

        def one(i):
            results[i] = srv.post({**HI, "max_tokens": 64})
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(results))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert all(r[0] == 200 and r[2][-1] == {"done": True} and len(r[2]) > 1 for r in results)
        assert {e["gpu"] for r in results for e in r[2][:-1]} <= set(range(n))
        c = srv.conn()
        c.request("POST", "/chat/completions", body=json.dumps({**HI, "max_tokens": 4096}),
                  headers={"Content-Type": "application/json"})
        events = read_events(c.getresponse())
        assert "token" in next(events)
        c.sock.shutdown(socket.SHUT_RDWR)
        c.close()
        assert wait_for(lambda: srv.get_json("/health")[1]["available_workers"] == n, timeout=5, interval=0.01)
        print(json.dumps(srv.get_json("/stats")[1], indent=1))
    finally:
        srv.stop()
