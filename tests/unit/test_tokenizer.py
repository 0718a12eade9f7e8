"""Tokenizer: rustbpe training, special tokens at the top ids, digit splitting, plain-JSON save/load, token bytes,
chat rendering with loss masks, and the tok_train / tok_eval entry points."""
import json
import os
import random
import subprocess
import sys

import pytest
import torch

from nanochat.common import UsageError
from nanochat.tokenizer import SPECIAL_TOKENS, Tokenizer, get_token_bytes, get_tokenizer

WORDS = ("the of and to in is was for on that with as by at from this which be are an or has it not but were "
         "energy water light system model data number value time year city river school student learning "
         "function return class object method string list tuple example result python token training").split()

ROUND_TRIP_TEXTS = [
    "Hello world! The year 2025 has 365 days.",
    "Ünïcödé façade — naïve café ✓ 🚀 emoji",
    "한국어는 교착어이다. 日本語のテキスト。",
    "def f(x):\n\treturn x ** 2  # tabs and\r\n CRLF\n\n\n",
    "   leading and trailing spaces   ",
    "<|bos|> written as text stays text",
    "",
]


def synthetic_corpus(n_docs=400, seed=0):
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        words = [rng.choice(WORDS) for _ in range(rng.randint(20, 80))]
        docs.append(" ".join(words).capitalize() + f". In {rng.randint(1900, 2030)} it cost {rng.randint(1, 99999)}.")
    return docs


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train_from_iterator(iter(synthetic_corpus()), 512)


def test_vocab_size_and_special_tokens_at_top_ids(tokenizer):
    assert tokenizer.get_vocab_size() == 512
    assert [tokenizer.encode_special(name) for name in SPECIAL_TOKENS] == list(range(512 - 9, 512))
    assert tokenizer.get_bos_token_id() == 503
    assert tokenizer.id_to_token(503) == "<|bos|>"
    with pytest.raises(KeyError):
        tokenizer.encode_special("<|nope|>")


def test_training_learned_merges(tokenizer):
    ids = tokenizer.encode(" the energy of the water")
    assert len(ids) < len(" the energy of the water".encode()) / 2   # frequent words became single tokens
    assert max(ids) < 503                                               # no special token in ordinary text


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_round_trip(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_token_text_is_encoded_as_ordinary_text(tokenizer):
    ids = tokenizer.encode("<|bos|><|assistant_end|>")
    assert not set(ids) & set(tokenizer.special_tokens.values())


def test_digits_are_split_in_groups_of_one_or_two(tokenizer):
    ids = tokenizer.encode("1234567 89 0")
    pieces = [tokenizer.id_to_token(i) for i in ids]
    digit_runs = [p.strip() for p in pieces if p.strip().isdigit()]
    assert "".join(digit_runs) == "1234567890"
    assert all(1 <= len(run) <= 2 for run in digit_runs), pieces
    assert digit_runs[:4] == ["12", "34", "56", "7"]   # split left to right in pairs


def test_batch_encode_matches_single_and_prepend_append(tokenizer):
    texts = synthetic_corpus(20, seed=3)
    batch = tokenizer.encode(texts, prepend="<|bos|>", append=tokenizer.encode_special("<|assistant_end|>"),
                             num_threads=2)
    for text, ids in zip(texts, batch):
        assert ids == [503] + tokenizer.encode(text) + [tokenizer.encode_special("<|assistant_end|>")]
    assert tokenizer.encode("abc", prepend=503)[0] == 503


def test_save_load_is_plain_json_and_equal(tokenizer, tmp_path):
    tokenizer.save(str(tmp_path))
    tokenizer.save_token_bytes(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["token_bytes.pt", "tokenizer.json"]   # no .pkl, no temp files
    with open(tmp_path / "tokenizer.json", encoding="utf-8") as f:
        data = json.load(f)
    assert data["pattern"] == tokenizer.pattern
    assert data["special_tokens"] == {name: 503 + i for i, name in enumerate(SPECIAL_TOKENS)}
    assert len(data["mergeable_ranks"]) == 503

    loaded = Tokenizer.from_directory(str(tmp_path))
    assert loaded.mergeable_ranks == tokenizer.mergeable_ranks
    assert loaded.special_tokens == tokenizer.special_tokens
    assert loaded.get_vocab_size() == 512
    for text in ROUND_TRIP_TEXTS + synthetic_corpus(10, seed=9):
        assert loaded.encode(text) == tokenizer.encode(text)


def test_token_bytes_sum_to_utf8_length(tokenizer, tmp_path):
    tokenizer.save_token_bytes(str(tmp_path))
    token_bytes = torch.load(tmp_path / "token_bytes.pt", weights_only=True)
    assert token_bytes.dtype == torch.int64 and token_bytes.shape == (512,)
    assert token_bytes[503:].tolist() == [0] * 9
    assert token_bytes[:256].tolist() == [1] * 256
    for text in ROUND_TRIP_TEXTS:
        ids = tokenizer.encode(text, prepend="<|bos|>")
        assert int(token_bytes[ids].sum()) == len(text.encode("utf-8"))


def test_get_tokenizer_and_token_bytes_from_base_dir(tokenizer, base_dir):
    with pytest.raises(UsageError, match="tok_train"):
        get_tokenizer()
    with pytest.raises(UsageError, match="tok_train"):
        get_token_bytes()
    tokenizer.save(str(base_dir / "tokenizer"))
    tokenizer.save_token_bytes(str(base_dir / "tokenizer"))
    assert get_tokenizer().encode("the city") == tokenizer.encode("the city")
    assert get_token_bytes("cpu").shape == (512,)


def test_corrupt_tokenizer_file_is_a_usage_error(base_dir):
    (base_dir / "tokenizer").mkdir()
    (base_dir / "tokenizer" / "tokenizer.json").write_text("{not json")
    with pytest.raises(UsageError, match="tok_train"):
        get_tokenizer()


def test_vocab_size_too_small_is_rejected():
    with pytest.raises(UsageError, match="at least 265"):
        Tokenizer.train_from_iterator(iter(["abc"]), 100)


# ---------------------------------------------------------------------------------------------------------------
# chat rendering

def _segments(tokenizer, ids, mask):
    """Group a rendered conversation into (text, mask) runs for readable assertions."""
    runs = []
    for i, m in zip(ids, mask):
        if runs and runs[-1][1] == m:
            runs[-1][0].append(i)
        else:
            runs.append(([i], m))
    return [(tokenizer.decode(r), m) for r, m in runs]


def test_render_conversation_masks_only_assistant_tokens(tokenizer):
    conv = {"messages": [
        {"role": "user", "content": "What is the city?"},
        {"role": "assistant", "content": "The river city."},
        {"role": "user", "content": "And the year?"},
        {"role": "assistant", "content": "2025."},
    ]}
    ids, mask = tokenizer.render_conversation(conv)
    assert len(ids) == len(mask)
    assert _segments(tokenizer, ids, mask) == [
        ("<|bos|><|user_start|>What is the city?<|user_end|><|assistant_start|>", 0),
        ("The river city.<|assistant_end|>", 1),
        ("<|user_start|>And the year?<|user_end|><|assistant_start|>", 0),
        ("2025.<|assistant_end|>", 1),
    ]


def test_render_conversation_tool_parts_and_system_message(tokenizer):
    conv = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Compute 12*34."},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me compute. "},
            {"type": "python", "text": "12*34"},
            {"type": "python_output", "text": "408"},
            {"type": "text", "text": " It is 408."},
        ]},
    ]}
    ids, mask = tokenizer.render_conversation(conv)
    assert _segments(tokenizer, ids, mask) == [
        ("<|bos|><|user_start|>Be brief.\n\nCompute 12*34.<|user_end|><|assistant_start|>", 0),
        ("Let me compute. <|python_start|>12*34<|python_end|>", 1),
        ("<|output_start|>408<|output_end|>", 0),
        (" It is 408.<|assistant_end|>", 1),
    ]


def test_render_conversation_truncates_and_validates(tokenizer):
    conv = {"messages": [{"role": "user", "content": "the " * 50}, {"role": "assistant", "content": "ok " * 50}]}
    full_ids, full_mask = tokenizer.render_conversation(conv)
    ids, mask = tokenizer.render_conversation(conv, max_tokens=10)
    assert ids == full_ids[:10] and mask == full_mask[:10]
    with pytest.raises(ValueError):
        tokenizer.render_conversation({"messages": [{"role": "assistant", "content": "hi"}]})
    with pytest.raises(ValueError):
        tokenizer.render_conversation({"messages": [
            {"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "image", "text": ""}]}]})


def test_render_for_completion(tokenizer):
    conv = {"messages": [
        {"role": "user", "content": "Name a river."},
        {"role": "assistant", "content": "The river."},
    ]}
    ids = tokenizer.render_for_completion(conv)
    full_ids, _ = tokenizer.render_conversation(conv)
    assert ids[-1] == tokenizer.encode_special("<|assistant_start|>")
    assert ids == full_ids[:len(ids)]                       # the prompt is a prefix of the full rendering
    assert len(conv["messages"]) == 2                      # the caller's conversation is untouched
    assert tokenizer.decode(ids) == "<|bos|><|user_start|>Name a river.<|user_end|><|assistant_start|>"


# ---------------------------------------------------------------------------------------------------------------
# entry points

def _write_shards(data_dir, docs, val_docs):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": docs}), data_dir / "shard_00000.parquet", row_group_size=64)
    pq.write_table(pa.table({"text": val_docs}), data_dir / "shard_01822.parquet", row_group_size=64)


def test_tok_train_and_tok_eval_scripts(base_dir):
    docs = synthetic_corpus(300, seed=1)
    # a marker string only in the validation shard: training must never see it
    _write_shards(base_dir / "base_data", docs, ["zqxjv zqxjv zqxjv zqxjv " * 50] * 50)
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(base_dir))
    run = subprocess.run([sys.executable, "-m", "nanochat.scripts.tok_train", "--vocab_size=400",
                          "--max-chars", "50000", "--doc_cap=300"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Vocab size: 400" in run.stdout and "Training time:" in run.stdout
    tok = Tokenizer.from_directory(str(base_dir / "tokenizer"))
    assert tok.get_vocab_size() == 400
    assert len(tok.encode(" zqxjv")) >= 3      # never merged: the validation text was not used for training
    assert torch.load(base_dir / "tokenizer" / "token_bytes.pt", weights_only=True).shape == (400,)

    run = subprocess.run([sys.executable, "-m", "nanochat.scripts.tok_eval"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    for row in ("news", "code", "math", "science", "korean", "train", "val"):
        assert any(line.startswith(row + " ") for line in run.stdout.splitlines()), run.stdout
    assert "FAILED" not in run.stdout


def test_tok_train_without_data_is_one_line_exit_2(base_dir):
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(base_dir))
    run = subprocess.run([sys.executable, "-m", "nanochat.scripts.tok_train", "--vocab_size=400"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "python -m nanochat.dataset -n 8" in errors[0] and "--demo" in errors[0]
    assert "Traceback" not in run.stderr
    bad = subprocess.run([sys.executable, "-m", "nanochat.scripts.tok_train", "--vocab_size=abc"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
