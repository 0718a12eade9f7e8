"""Task loaders on fixture parquet files in the real Hub schemas (served from 127.0.0.1), and the demo tasks."""
import http.server
import json
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nanochat.common import UsageError
from nanochat.engine import use_calculator
from nanochat.execution import sandbox_problem
from nanochat.tasks.arc import ARC
from nanochat.tasks.common import TaskMixture, extract_final_answer
from nanochat.tasks.demo import DemoArithmetic, DemoFirstLetter, demo_eval_tasks, demo_mixture
from nanochat.tasks.gsm8k import GSM8K, answer_to_parts
from nanochat.tasks.humaneval import HumanEval
from nanochat.tasks.hub import DatasetUnavailable
from nanochat.tasks.identity import IdentityConversations
from nanochat.tasks.mmlu import MMLU
from nanochat.tasks.smoltalk import SmolTalk
from nanochat.tasks.spelling import SimpleSpelling, SpellingBee

FIXTURE_ROWS = {
    ("cais/mmlu", "all", "test"): [
        {"question": "2+2?", "subject": "math", "choices": ["3", "4", "5", "6"], "answer": 1}],
    ("cais/mmlu", "auxiliary_train", "train"): [
        {"train": {"question": "Sky colour?", "subject": "", "choices": ["red", "blue", "green", "black"],
                   "answer": 1}}],
    ("allenai/ai2_arc", "ARC-Easy", "test"): [
        {"id": "q1", "question": "Which is a mammal?", "answerKey": "C",
         "choices": {"text": ["trout", "eagle", "whale"], "label": ["A", "B", "C"]}}],
    ("openai/gsm8k", "main", "test"): [
        {"question": "Tom has 3 bags of 4 apples and eats 2. How many are left?",
         "answer": "He has 3*4=<<3*4=12>>12 apples. 12-2=<<12-2=10>>10 are left.\n#### 10"}],
    ("openai/openai_humaneval", "openai_humaneval", "test"): [
        {"task_id": "HumanEval/0", "prompt": "import math\n\ndef add(a, b):\n    \"\"\"Add two numbers.\"\"\"\n",
         "canonical_solution": "    return a + b\n", "entry_point": "add",
         "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"}],
    ("HuggingFaceTB/smol-smoltalk", "default", "train"): [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello!"}], "source": "x"}],
}


class HubHandler(http.server.BaseHTTPRequestHandler):
    root: Path = None
    requests = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        HubHandler.requests.append(self.path)
        host = f"http://127.0.0.1:{self.server.server_address[1]}"
        if self.path.startswith("/api/datasets/"):
            rel = self.path[len("/api/datasets/"):].replace("/parquet/", "/")
            d = self.root / rel
            if not d.is_dir():
                return self.send_error(404)
            body = json.dumps([f"{host}/files/{rel}/{p.name}" for p in sorted(d.glob("*.parquet"))]).encode()
        elif self.path.startswith("/files/"):
            f = self.root / self.path[len("/files/"):]
            if not f.is_file():
                return self.send_error(404)
            body = f.read_bytes()
        else:
            return self.send_error(404)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def hub(tmp_path, base_dir, monkeypatch):
    root = tmp_path / "hub"
    for (repo, config, split), rows in FIXTURE_ROWS.items():
        d = root / repo / config / split
        d.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), d / "0.parquet")
    HubHandler.root, HubHandler.requests = root, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HubHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("NANOCHAT_HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    yield server
    server.shutdown()


def test_loaders_in_real_schemas(hub):
    mmlu = MMLU("all", "test")[0]
    assert mmlu["letters"] == ["A", "B", "C", "D"] and mmlu["messages"][1]["content"] == "B"
    assert "- 4=B" in mmlu["messages"][0]["content"]
    assert MMLU("auxiliary_train", "train")[0]["messages"][1]["content"] == "B"
    arc = ARC("ARC-Easy", "test")[0]
    assert arc["letters"] == ["A", "B", "C"] and arc["messages"][1]["content"] == "C"
    assert ARC("ARC-Easy", "test").evaluate(arc, " C ")
    gsm = GSM8K("main", "test")
    ex = gsm[0]
    parts = ex["messages"][1]["content"]
    assert [p["type"] for p in parts] == ["text", "python", "python_output", "text", "python", "python_output",
                                          "text"]
    assert parts[1]["text"] == "3*4" and parts[2]["text"] == "12"
    assert gsm.evaluate(ex, "so 10 are left\n#### 10") and not gsm.evaluate(ex, "#### 11")
    talk = SmolTalk("train")[0]
    assert [m["role"] for m in talk["messages"]] == ["system", "user", "assistant"]


def test_downloads_are_cached(hub):
    MMLU("all", "test")
    hub.shutdown()
    assert len(MMLU("all", "test")) == 1  # served from $BASE/hf_cache without the network


@pytest.mark.skipif(bool(sandbox_problem()), reason=str(sandbox_problem()))
def test_humaneval_runs_tests_in_sandbox(hub):
    task = HumanEval()
    task.timeout_s = 1.0
    ex = task[0]
    assert task.evaluate(ex, "```python\nimport math\ndef add(a, b):\n    return a + b\n```")
    assert not task.evaluate(ex, "def add(a, b):\n    return a - b\n")
    assert not task.evaluate(ex, "def add(a, b):\n    while True: pass\n")


def test_offline_is_one_clear_error(base_dir, monkeypatch):
    monkeypatch.setenv("NANOCHAT_HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(DatasetUnavailable) as info:
        GSM8K("main", "train")
    message = str(info.value)
    assert isinstance(info.value, UsageError) and "\n" not in message
    assert message.startswith("cannot download openai/gsm8k") and "--demo" in message


def test_gsm8k_calculator_spans_match_the_tool():
    parts = answer_to_parts("a <<48/2=24>>24 b <<24+3=27>>27\n#### 27")
    calls = [(p["text"], q["text"]) for p, q in zip(parts, parts[1:]) if p["type"] == "python"]
    assert calls == [("48/2", "24"), ("24+3", "27")]
    assert all(use_calculator(expr) == out for expr, out in calls)


WORDS = ["apple", "banana", "cherry", "strawberry", "letter", "python", "window", "garden", "river", "summer",
         "winter", "planet", "rocket", "kitten", "mirror", "pencil", "rabbit", "tomato", "wizard", "copper",
         "dragon", "engine", "falcon", "island", "jungle", "kettle", "marble", "parrot", "silver", "yellow"]


def test_demo_tasks_are_self_consistent():
    for task in (SpellingBee(size=40, words=WORDS), DemoArithmetic(size=40)):
        for ex in task:
            parts = ex["messages"][1]["content"]
            for p, q in zip(parts, parts[1:]):
                if p["type"] == "python":
                    assert q["type"] == "python_output" and use_calculator(p["text"]) == q["text"]
            text = "".join(p["text"] for p in parts)
            assert task.evaluate(ex, text)
            assert not task.evaluate(ex, "#### 99999")
    spelling = SimpleSpelling(size=5, words=WORDS)
    ex = spelling[0]
    word = ex["messages"][1]["content"].split(":")[0]
    assert ex["messages"][1]["content"] == word + ":" + ",".join(word) and spelling.evaluate(ex, ex["messages"][1]["content"])
    mc = DemoFirstLetter(WORDS, size=10)
    for ex in mc:
        assert ex["messages"][1]["content"] in ex["letters"]
    # held-out words never appear in training examples
    train_words = {SimpleSpelling(size=300, words=WORDS)[i]["messages"][1]["content"].split(":")[0]
                   for i in range(300)}
    test_words = {SimpleSpelling(size=100, split="test", words=WORDS)[i]["messages"][1]["content"].split(":")[0]
                  for i in range(100)}
    assert train_words.isdisjoint(test_words)
    assert extract_final_answer("so\n#### 1,234.50") == "1234.5"


def test_demo_mixture_and_identity(base_dir):
    identity = IdentityConversations(demo=True)  # the bundled set: the offline demo's only
    assert len(identity) >= 20
    for conv in identity:
        roles = [m["role"] for m in conv["messages"]]
        assert roles[0] == "user" and roles[1] == "assistant"
    mix = demo_mixture("train", size=200, words=WORDS)
    assert len(mix) >= 150 and isinstance(mix, TaskMixture)
    assert {t for t in demo_eval_tasks(words=WORDS, size=5)} == {"SpellingBee", "SimpleSpelling", "DemoArithmetic",
                                                                 "DemoFirstLetter"}


class CountingTokenizer:
    """Renders conversation i as [1000+i] followed by i+1 tokens; assistant tokens are the odd positions."""
    def render_conversation(self, conv, max_tokens=2048):
        i = conv["i"]
        ids = [1000 + i] + list(range(1, i + 2))
        return ids[:max_tokens], [k % 2 for k in range(len(ids))][:max_tokens]

    def encode_special(self, name):
        return 0


def test_packed_loader_is_contiguous_and_resumes_at_any_batch():
    from nanochat.tasks.batching import PackedConversationLoader
    data = [{"i": i} for i in range(7)]
    tok = CountingTokenizer()
    big = PackedConversationLoader(tok, data, 4, 8, "cpu")
    x4, y4 = big.next_batch()
    small = PackedConversationLoader(tok, data, 2, 8, "cpu")
    xa, _ = small.next_batch()
    resumed = PackedConversationLoader(tok, data, 2, 8, "cpu", state=small.state_dict())
    xb, yb = resumed.next_batch()
    assert torch.equal(torch.cat([xa, xb]), x4) and torch.equal(yb, y4[2:])
    assert torch.equal(x4.view(-1)[1:], y4.view(-1)[:-1])  # targets are the next tokens


def test_sft_loader_masks_pads_and_counts_step_targets():
    from nanochat.tasks.batching import SFTLoader, check_sft_batch
    data = [{"i": i} for i in range(6)]
    loader = SFTLoader(CountingTokenizer(), data, 2, 2, "cpu", max_seq_len=64)
    x, y, w = loader.next_batch()
    assert x.shape == (2, 2) and y.tolist() == [[1, -1], [1, -1]]  # conv 0: 2 tokens (one target); conv 1: 3 tokens
    # each micro-batch (group of 2) weighs 1/2 of the step: 2 targets here, 4 in the next (convs 2 and 3 have two)
    assert w.tolist() == pytest.approx([1 / (2 * 2)] * 2) and loader.state_dict() == {"example": 2, "group": 2}
    x2, y2, w2 = loader.next_batch()
    assert x2[0].tolist() == [1002, 1, 2, 0] and y2[0].tolist() == [1, -1, 3, -1]  # padded with the pad id
    assert w2.tolist() == pytest.approx([1 / (4 * 2)] * 2)
    resumed = SFTLoader(CountingTokenizer(), data, 1, 4, "cpu", max_seq_len=64, state={"example": 2})
    assert resumed.next_batch()[0][0].tolist() == [1002, 1, 2]
    assert check_sft_batch(32, 4) == 8
    with pytest.raises(UsageError):
        check_sft_batch(32, 3)


# ---------------------------------------------------------------------------------------------------------------------
# upstream's task order: every hub task is shuffled with seed 42 before any slicing

# datasets.Dataset.shuffle(seed=42) draws numpy's default_rng(42).permutation(n); for n = 10 that is (checked with
# `datasets` 5.2.0: Dataset.from_dict({'k': list(range(10))}).shuffle(seed=42)['k']):
HF_SHUFFLE_42_OF_10 = [5, 6, 0, 7, 3, 2, 4, 9, 1, 8]


def _numbered(kind, k):
    if kind == "mmlu":
        return {"question": f"row {k}", "subject": "s", "choices": ["a", "b", "c", "d"], "answer": k % 4}
    if kind == "arc":
        return {"id": str(k), "question": f"row {k}", "answerKey": "A",
                "choices": {"text": ["x", "y"], "label": ["A", "B"]}}
    if kind == "gsm8k":
        return {"question": f"row {k}", "answer": f"#### {k}"}
    if kind == "humaneval":
        return {"task_id": str(k), "prompt": f"row {k}", "canonical_solution": "", "entry_point": "f", "test": ""}
    return {"messages": [{"role": "user", "content": f"row {k}"}, {"role": "assistant", "content": "ok"}]}


@pytest.fixture
def numbered_hub(tmp_path, base_dir, monkeypatch):
    """Ten rows per dataset, numbered 0..9 in file order, over two parquet files (rows 0-4, 5-9)."""
    root = tmp_path / "hub"
    keys = {("HuggingFaceTB/smol-smoltalk", "default", "train"): "smoltalk", ("cais/mmlu", "all", "test"): "mmlu",
            ("openai/gsm8k", "main", "test"): "gsm8k", ("allenai/ai2_arc", "ARC-Easy", "test"): "arc",
            ("openai/openai_humaneval", "openai_humaneval", "test"): "humaneval"}
    for (repo, config, split), kind in keys.items():
        d = root / repo / config / split
        d.mkdir(parents=True)
        for f, ks in enumerate((range(5), range(5, 10))):
            pq.write_table(pa.Table.from_pylist([_numbered(kind, k) for k in ks]), d / f"{f}.parquet")
    HubHandler.root, HubHandler.requests = root, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HubHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("NANOCHAT_HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    yield server
    server.shutdown()


def test_hub_tasks_are_in_upstreams_seed_42_order_before_slicing(numbered_hub):
    def numbers(task):
        return [int(task[i]["messages"][0]["content"].split("row ")[1].split()[0]) for i in range(len(task))]
    assert numbers(SmolTalk("train")) == HF_SHUFFLE_42_OF_10
    assert numbers(SmolTalk("train", stop=3)) == HF_SHUFFLE_42_OF_10[:3]  # SmolTalk(stop=10_000) in SFT
    assert numbers(GSM8K("main", "test", stop=4)) == HF_SHUFFLE_42_OF_10[:4]  # mid's validation GSM8K slice
    assert numbers(ARC("ARC-Easy", "test")) == HF_SHUFFLE_42_OF_10
    assert [int(HumanEval()[i]["prompt"].split()[1]) for i in range(10)] == HF_SHUFFLE_42_OF_10
    mmlu = MMLU("all", "test", stop=5)  # mid's validation MMLU slice
    assert [int(mmlu[i]["messages"][0]["content"].split("row ")[1].split("\n")[0]) for i in range(5)] == \
        HF_SHUFFLE_42_OF_10[:5]


# ---------------------------------------------------------------------------------------------------------------------
# SpellingBee: upstream's behaviour and variety

def test_spelling_bee_variety_walkthrough_tool_check_and_answer():
    from nanochat.tasks.spelling import COUNT_TEMPLATES
    assert len(COUNT_TEMPLATES) >= 50 and len(set(COUNT_TEMPLATES)) == len(COUNT_TEMPLATES)
    assert sum(any(ord(ch) > 127 for ch in t) for t in COUNT_TEMPLATES) >= 12  # several languages
    task = SpellingBee(size=600, words=WORDS)
    questions, counts, quoting = [], [], set()
    for ex in task:
        question = ex["messages"][0]["content"]
        parts = ex["messages"][1]["content"]
        assert [p["type"] for p in parts] == ["text", "text", "python", "python_output", "text"]
        word, letter = parts[2]["text"].split("'")[1], parts[2]["text"].split("'")[3]
        assert word in question and letter in question
        count = word.count(letter)
        manual = parts[0]["text"].splitlines()
        # the manual walk-through: the spelled word, then one line per letter (no space after the position),
        # a running count on each hit, and the manual total
        assert f"{word}:{','.join(word)}" in manual
        walk = [line for line in manual if line[:1].isdigit()]
        assert [line.split(" ")[0] for line in walk] == [f"{i}:{c}" for i, c in enumerate(word, 1)]
        hits = [line for line in walk if " " in line]
        assert len(hits) == count and all(line.endswith(str(k)) for k, line in enumerate(hits, 1))
        assert manual[-1].endswith(f"{count}.")
        assert use_calculator(parts[2]["text"]) == parts[3]["text"] == str(count)  # then the Python check
        assert parts[4]["text"].endswith(f"#### {count}")
        assert task.evaluate(ex, "".join(p["text"] for p in parts)) and not task.evaluate(ex, f"#### {count + 1}")
        questions.append(question)
        counts.append(count)
        quoting.add((f"'{letter}'" in question, f'"{letter}"' in question, f"'{word}'" in question,
                     f'"{word}"' in question))
    assert 0.3 < sum(q.endswith("?") for q in questions) / len(questions) < 0.7  # "?" half the time
    assert any(q[:1].islower() and q[:1].isascii() and not q.startswith(("'", '"')) for q in questions)
    # quoting styles: letter and word each bare, in single or in double quotes, independently
    assert {(True, False, False, True), (False, True, True, False), (False, False, False, False)} <= quoting
    assert any(any(ord(ch) > 127 for ch in q) for q in questions)
    assert 0 in counts and max(counts) >= 2  # a letter not in the word now and then (1 in 10 draws)
    assert len(set(q.rstrip("?") for q in questions)) > 500


def test_spelling_tasks_seed_examples_by_index_as_upstream():
    import random
    train, test = SpellingBee(size=5, words=WORDS), SpellingBee(size=5, split="test", words=WORDS)
    rng = random.Random(3)  # train example 3 is drawn from Random(3): first the word, as upstream
    assert train[3]["messages"][1]["content"][2]["text"].split("'")[1] == rng.choice(train.words)
    rng = random.Random(-4)  # test example 3 from Random(-(3+1))
    assert test[3]["messages"][1]["content"][2]["text"].split("'")[1] == rng.choice(test.words)
    simple = SimpleSpelling(size=3, words=WORDS)
    assert simple[0]["messages"][0]["content"].startswith("Spell the word: ")


# ---------------------------------------------------------------------------------------------------------------------
# identity conversations and the mixtures (upstream's recipe)

def test_identity_file_choice_and_validation(base_dir, tmp_path, monkeypatch):
    from nanochat.tasks.identity import BUNDLED_IDENTITY_FILE, identity_file
    with pytest.raises(UsageError, match="nanochat.dataset --identity"):
        IdentityConversations()  # real runs need the downloaded (or the user's) file, never the bundled one
    assert identity_file(demo=True) == BUNDLED_IDENTITY_FILE
    own = tmp_path / "mine.jsonl"
    own.write_text(json.dumps([{"role": "user", "content": "who?"}, {"role": "assistant", "content": "me"}]) + "\n")
    assert len(IdentityConversations(str(own))) == 1
    monkeypatch.setenv("NANOCHAT_IDENTITY_FILE", str(own))
    assert IdentityConversations().path == str(own) and IdentityConversations(demo=True).path == str(own)
    for bad, what in [([{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}], "role 'user'"),
                      ([{"role": "user", "content": "x"}], "at least two"),
                      ([{"role": "user", "content": "x"}, {"role": "assistant", "content": 3}], "string content")]:
        own.write_text("\n" + json.dumps(bad) + "\n")
        with pytest.raises(UsageError, match=f"line 2: .*{what}"):
            IdentityConversations(str(own))


class _Stub:
    """Stands in for a hub task in the mixture tests: records how it was built, holds `n` conversations."""
    built = []

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        _Stub.built.append(self)

    def __len__(self):
        return 3

    def __getitem__(self, i):
        return {"messages": [{"role": "user", "content": f"{type(self).__name__} {i}"}]}


def test_mixtures_are_upstreams_recipe_with_identity_twice_in_mid(base_dir, monkeypatch, tmp_path):
    from nanochat.tasks import arc, gsm8k, mixtures, mmlu, smoltalk, spelling
    for module, name in [(arc, "ARC"), (gsm8k, "GSM8K"), (mmlu, "MMLU"), (smoltalk, "SmolTalk"),
                         (spelling, "SimpleSpelling"), (spelling, "SpellingBee")]:
        monkeypatch.setattr(module, name, type(name, (_Stub,), {}))
    own = tmp_path / "id.jsonl"
    own.write_text("".join(json.dumps([{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}])
                           + "\n" for i in range(5)))
    _Stub.built = []
    mid = mixtures.mid_mixture("train", demo=False, identity_file=str(own))
    built = [(type(t).__name__, t.args, t.kwargs) for t in _Stub.built]
    assert built == [("SmolTalk", ("train",), {}), ("MMLU", ("auxiliary_train", "train"), {}),
                     ("GSM8K", ("main", "train"), {}), ("SimpleSpelling", (), {"size": 200_000, "split": "train"}),
                     ("SpellingBee", (), {"size": 80_000, "split": "train"})]
    identity_rows = [mid[i] for i in range(len(mid)) if mid[i]["messages"][0]["content"].startswith("q")]
    assert len(mid) == 5 * 3 + 2 * 5 and len(identity_rows) == 10  # two epochs of the identity set
    _Stub.built = []
    sft = mixtures.sft_mixture("train", demo=False, identity_file=str(own))
    built = [(type(t).__name__, t.args, t.kwargs) for t in _Stub.built]
    assert built == [("ARC", ("ARC-Easy", "train"), {}), ("ARC", ("ARC-Challenge", "train"), {}),
                     ("GSM8K", ("main", "train"), {}), ("SmolTalk", ("train",), {"stop": 10_000}),
                     ("SimpleSpelling", (), {"size": 300, "split": "train"}),
                     ("SpellingBee", (), {"size": 300, "split": "train"})]
    assert len(sft) == 6 * 3 + 5
