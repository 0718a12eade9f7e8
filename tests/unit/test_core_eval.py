"""CORE: eval-bundle download from a local HTTP server (with a bundle the test builds) and scoring mechanics."""
import functools
import http.server
import io
import json
import threading
import zipfile

import pytest
import torch

from nanochat.core_eval import (EvalBundleUnavailable, _prompts, centred, download_eval_bundle, evaluate_core,
                                load_core_tasks)
from nanochat.gpt import GPT, GPTConfig

CORE_YAML = """icl_tasks:
- label: toy_mc
  dataset_uri: toy/mc.jsonl
  num_fewshot: [2]
  icl_task_type: multiple_choice
- label: toy_schema
  dataset_uri: toy/schema.jsonl
  num_fewshot: [0]
  icl_task_type: schema
- label: toy_lm
  dataset_uri: toy/lm.jsonl
  num_fewshot: [1]
  icl_task_type: language_modeling
  continuation_delimiter: ' '
"""
META_CSV = "Eval Task,Task Category,Task Type,#shots,#datapoints,Random baseline,Centered Metric?,Description\n" \
           "toy_mc,x,y,2,4,25,yes,d\ntoy_schema,x,y,0,4,50,yes,d\ntoy_lm,x,y,1,4,0,yes,d\n"
MC = [{"query": f"Question {i}: what is {i}+1?", "choices": [str(i), str(i + 1), "blue", "seven"], "gold": 1}
      for i in range(4)]
SCHEMA = [{"context_options": ["The cat sat", "The dog ran"], "continuation": "on the mat.", "gold": 0}] * 4
LM = [{"context": f"Count: {i} {i + 1}", "continuation": f"{i + 2}"} for i in range(4)]


def build_bundle() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("eval_bundle/core.yaml", CORE_YAML)
        z.writestr("eval_bundle/eval_meta_data.csv", META_CSV)
        for name, rows in (("mc", MC), ("schema", SCHEMA), ("lm", LM)):
            z.writestr(f"eval_bundle/eval_data/toy/{name}.jsonl", "\n".join(json.dumps(r) for r in rows))
    return buf.getvalue()


class ZipHandler(http.server.BaseHTTPRequestHandler):
    def __init__(self, body, *args, **kwargs):
        self.body = body
        super().__init__(*args, **kwargs)

    def log_message(self, *a):
        pass

    def do_GET(self):
        if self.path != "/eval_bundle.zip":
            return self.send_error(404)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)


@pytest.fixture
def bundle_url(base_dir):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(ZipHandler, build_bundle()))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/eval_bundle.zip", server
    server.shutdown()


class CharTokenizer:
    def get_bos_token_id(self):
        return 0

    def encode(self, text, prepend=None):
        ids = [1 + (ord(c) % 126) for c in text]
        return ([prepend] if prepend is not None else []) + ids


def test_download_load_and_score(bundle_url, base_dir):
    url, server = bundle_url
    path = download_eval_bundle(url)
    assert (base_dir / "eval_bundle" / "core.yaml").exists()
    server.shutdown()
    assert download_eval_bundle(url) == path  # cached: no network needed any more
    tasks = load_core_tasks(path)
    assert [t["label"] for t in tasks] == ["toy_mc", "toy_schema", "toy_lm"]
    assert [t["random_baseline"] for t in tasks] == [25.0, 50.0, 0.0]
    texts, gold = _prompts(tasks[0], tasks[0]["data"], 0)
    assert len(texts) == 4 and gold == 1 and texts[1].endswith("what is 0+1? 1") and texts[1].count("\n\n") == 2
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=128, vocab_size=128, n_layer=1, n_head=1, n_kv_head=1, n_embd=32))
    model.init_weights()
    out = evaluate_core(model.eval(), CharTokenizer(), "cpu", path, log=lambda *a: None)
    assert set(out["results"]) == {"toy_mc", "toy_schema", "toy_lm"}
    assert all(0.0 <= a <= 1.0 for a in out["results"].values())
    expected = sum(centred(out["results"][k], b) for k, b in (("toy_mc", 25), ("toy_schema", 50), ("toy_lm", 0))) / 3
    assert out["CORE"] == pytest.approx(expected)


def test_centring():
    assert centred(0.25, 25) == 0.0 and centred(1.0, 25) == 1.0 and centred(0.5, 0) == 0.5


def test_offline_bundle_is_a_usage_error(base_dir):
    with pytest.raises(EvalBundleUnavailable) as info:
        download_eval_bundle("http://127.0.0.1:9/eval_bundle.zip")
    assert "cannot download the CORE eval bundle" in str(info.value)
