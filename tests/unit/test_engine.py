"""Engine: the calculator's whitelist, KV-cache greedy == naive recompute, sampling controls, forced tool output."""
import torch
import torch.nn as nn

from nanochat.engine import Engine, KVCache, sample_next_token, use_calculator
from nanochat.gpt import GPT, GPTConfig

SPECIALS = ["<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>",
            "<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>"]


class ByteTokenizer:
    """Bytes are tokens 0..255, the special tokens follow."""
    def encode_special(self, name):
        return 256 + SPECIALS.index(name)

    def get_bos_token_id(self):
        return 256

    def encode(self, text):
        return list(text.encode())

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode(errors="replace")

    def get_vocab_size(self):
        return 256 + len(SPECIALS)


def test_calculator_allows_arithmetic_and_count():
    assert use_calculator("2 + 3 * 4") == "14"
    assert use_calculator("48 / 2") == "24"
    assert use_calculator("7 / 2") == "3.5"
    assert use_calculator("1,200 * 3") == "3600"
    assert use_calculator("(10 - 4) // 4 % 5") == "1"
    assert use_calculator("'strawberry'.count('r')") == "3"


def test_calculator_refusals():
    for expr in ("x + 1", "__import__('os')", "open('f')", "'abc'.upper()", "(1).real", "2 ** 10",
                 "10 ** 10 ** 10", "'a' * 1000000000", "[1] * 10", "1 / 0", "lambda: 1",
                 "'ab'.count(x)", "'ab'.count('a', 0)", "print(1)", "'a'.__class__"):
        assert use_calculator(expr) is None, expr
    # long-running expressions: too long to parse, or results that explode
    assert use_calculator("+".join(["123456789"] * 100)) is None
    assert use_calculator("*".join(["99999999999"] * 8)) is None


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(sequence_len=64, vocab_size=265, n_layer=2, n_head=2, n_kv_head=2, n_embd=64))
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)  # zero-initialised projections would make every logit equal
    return model.eval()


def test_kv_cache_greedy_equals_naive_recompute():
    model = _tiny_model()
    prompt = [256, 72, 101, 108, 108, 111, 44, 32]
    naive = list(prompt)
    with torch.no_grad():
        for _ in range(24):
            logits = model(torch.tensor([naive]))[:, -1, :]
            naive.append(int(logits.argmax(-1)))
    engine = Engine(model, ByteTokenizer())
    cached = list(prompt)
    for column, _ in engine.generate(prompt, num_samples=1, max_tokens=24, temperature=0.0):
        cached.append(column[0])
    # a special token that ends a row only stops the row; compare the full greedy stream
    assert cached == naive
    # batched greedy samples are all the same stream
    results, _ = engine.generate_batch(prompt, num_samples=3, max_tokens=24, temperature=0.0)
    for r in results:
        assert r == naive[:len(r)]


def test_sampling_controls():
    rng = torch.Generator().manual_seed(0)
    logits = torch.tensor([[0.0, 5.0, 4.9, -3.0]]).repeat(200, 1)
    assert sample_next_token(logits, rng, temperature=0.0).unique().tolist() == [1]
    top2 = sample_next_token(logits, rng, temperature=1.0, top_k=2).unique().tolist()
    assert set(top2) == {1, 2}
    hot = sample_next_token(logits, rng, temperature=5.0).unique().tolist()
    assert 0 in hot
    model = _tiny_model(1)
    engine = Engine(model, ByteTokenizer())
    a, _ = engine.generate_batch([256, 65], num_samples=4, max_tokens=10, temperature=1.0, seed=1)
    b, _ = engine.generate_batch([256, 65], num_samples=4, max_tokens=10, temperature=1.0, seed=1)
    assert a == b  # seeded
    assert len({tuple(r) for r in a}) > 1  # rows sample independently


def test_kv_cache_positions():
    cache = KVCache(1, 2, 8, 4, num_layers=2)
    k = torch.randn(1, 2, 3, 4)
    cache.insert_kv(0, k, k)
    assert cache.get_pos() == 0
    keys, _ = cache.insert_kv(1, k, k)
    assert cache.get_pos() == 3 and keys.shape == (1, 2, 3, 4)


class ScriptedModel(nn.Module):
    """Emits a fixed token script regardless of input, to drive the tool-use state machine."""
    def __init__(self, script, vocab=265):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.script, self.vocab, self.calls = script, vocab, 0
        self.config = GPTConfig(sequence_len=64, vocab_size=vocab, n_layer=1, n_head=1, n_kv_head=1, n_embd=8)

    def forward(self, idx, kv_cache=None):
        B, T = idx.shape
        if kv_cache is not None:
            kv_cache.insert_kv(0, torch.zeros(B, 1, T, 8), torch.zeros(B, 1, T, 8))
        logits = torch.zeros(B, T, self.vocab)
        logits[:, -1, self.script[min(self.calls, len(self.script) - 1)]] = 10.0
        self.calls += 1
        return logits


def test_tool_use_forces_calculator_output():
    tok = ByteTokenizer()
    S = tok.encode_special
    filler = ord("z")
    script = [S("<|python_start|>"), *tok.encode("6*7"), S("<|python_end|>"), filler, filler, filler, filler,
              S("<|assistant_end|>")]
    engine = Engine(ScriptedModel(script), tok)
    results, masks = engine.generate_batch([256], num_samples=1, max_tokens=20, temperature=0.0)
    out = results[0][1:]
    expected = [S("<|python_start|>"), *tok.encode("6*7"), S("<|python_end|>"),
                S("<|output_start|>"), *tok.encode("42"), S("<|output_end|>")]
    assert out[:len(expected)] == expected
    forced = masks[0][1:][len(expected) - 4:len(expected)]
    assert forced == [0, 0, 0, 0]
