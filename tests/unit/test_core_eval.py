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


# ---------------------------------------------------------------------------------------------------------------------
# upstream's CORE procedure: Random(1337) order before max_per_task, few-shot from the kept list, LM trimming,
# cropping only for models with a hard maximum length

def test_examples_are_shuffled_with_random_1337_before_max_per_task():
    from nanochat.core_eval import core_order
    assert core_order(list(range(10))) == [0, 3, 7, 2, 1, 6, 4, 5, 8, 9]  # random.Random(1337).shuffle
    assert core_order(list(range(10)), 4) == [0, 3, 7, 2]
    assert core_order(list(range(10)), -1) == core_order(list(range(10)))  # upstream's -1 = all


class RecordingTokenizer(CharTokenizer):
    def __init__(self):
        self.texts = []

    def encode(self, text, prepend=None):
        self.texts.append(text)
        return super().encode(text, prepend)


def _bundle_dir(tmp_path, tasks):
    """A bundle on disk: tasks = [(label, type, num_fewshot, rows)]."""
    root = tmp_path / "bundle"
    (root / "eval_data").mkdir(parents=True)
    yaml_lines, csv_lines = ["icl_tasks:"], ["Eval Task,Random baseline"]
    for label, kind, shots, rows in tasks:
        (root / "eval_data" / f"{label}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        yaml_lines += [f"- label: {label}", f"  dataset_uri: {label}.jsonl", f"  num_fewshot: [{shots}]",
                       f"  icl_task_type: {kind}"]
        csv_lines.append(f"{label},0")
    (root / "core.yaml").write_text("\n".join(yaml_lines) + "\n")
    (root / "eval_meta_data.csv").write_text("\n".join(csv_lines) + "\n")
    return str(root)


def _tiny_model(sequence_len=128):
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=sequence_len, vocab_size=128, n_layer=1, n_head=1, n_kv_head=1, n_embd=32))
    model.init_weights()
    return model.eval()


def test_max_per_task_keeps_the_shuffled_head_and_few_shot_comes_from_it(tmp_path):
    from nanochat.core_eval import core_order
    rows = [{"query": f"Question number {i}?", "choices": ["yes", "no"], "gold": 0} for i in range(10)]
    bundle = _bundle_dir(tmp_path, [("mc", "multiple_choice", 2, rows)])
    tok = RecordingTokenizer()
    evaluate_core(_tiny_model(), tok, "cpu", bundle, max_per_task=3, log=lambda *a: None)
    kept = {r["query"] for r in core_order(rows, 3)}
    seen = {r["query"] for r in rows if any(r["query"] in t for t in tok.texts)}
    assert seen == kept  # only the 3 kept examples, as items and as each other's few-shot examples
    assert all(sum(q in t for q in kept) == 3 for t in tok.texts)  # 2 shots + the item in every prompt


def test_language_modelling_contexts_are_trimmed_and_the_prefix_stripped():
    task = {"type": "language_modeling", "delimiter": " ", "num_fewshot": 1,
            "data": [{"context": "  Grass is ", "continuation": "green"},
                     {"context": "The sky is ", "continuation": "blue"}]}
    texts, gold = _prompts(task, task["data"], 1)
    assert gold is None
    assert texts == ["Grass is green\n\nThe sky is", "Grass is green\n\nThe sky is blue"]  # no double space


def test_prompts_are_cropped_only_for_a_model_with_a_maximum_length():
    from nanochat.core_eval import evaluate_example
    model = _tiny_model(sequence_len=16)
    widths = []
    model.register_forward_pre_hook(lambda module, args: widths.append(args[0].size(1)))
    task = {"type": "multiple_choice", "delimiter": " ", "num_fewshot": 0,
            "data": [{"query": "A long question " * 3, "choices": ["yes", "no"], "gold": 0}]}
    evaluate_example(model, CharTokenizer(), task, 0, "cpu")  # our GPT reads past sequence_len (rotary 10x)
    assert widths[-1] == 1 + len("A long question " * 3) + 4 > 16
    evaluate_example(model, CharTokenizer(), task, 0, "cpu", max_seq_len=20)
    assert widths[-1] == 20
