"""Inference: a KV cache, batched sampling (temperature, top-k, greedy) and the calculator tool the chat model calls."""
from __future__ import annotations

import ast
import operator
import time
from collections import deque

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------------------------
# Calculator tool: a tiny evaluator over a whitelisted AST (no eval, no names, no builtins).

MAX_EXPR_CHARS = 200
MAX_INT_DIGITS = 60
CALC_TIME_LIMIT_S = 0.05

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalculatorRefusal(Exception):
    pass


def _evaluate(node, deadline):
    if time.monotonic() > deadline:
        raise CalculatorRefusal("too slow")
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, deadline)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_number(_evaluate(node.operand, deadline)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:  # ast.Pow is deliberately absent
        left = _number(_evaluate(node.left, deadline))
        right = _number(_evaluate(node.right, deadline))
        result = _BINOPS[type(node.op)](left, right)
        if isinstance(result, int) and abs(result) >= 10 ** MAX_INT_DIGITS:
            raise CalculatorRefusal("result too large")
        return result
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "count"
            and isinstance(node.func.value, ast.Constant) and isinstance(node.func.value.value, str)
            and len(node.args) == 1 and not node.keywords
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        return node.func.value.value.count(node.args[0].value)
    raise CalculatorRefusal(f"not allowed: {type(node).__name__}")


def _number(value):
    if type(value) not in (int, float):
        raise CalculatorRefusal("arithmetic on non-numbers")
    return value


def use_calculator(expr: str) -> str | None:
    """Evaluate arithmetic (+ - * / // % and parentheses) or `'text'.count('x')`; None when refused or failing."""
    expr = expr.strip()
    if not expr or len(expr) > MAX_EXPR_CHARS:
        return None
    if ".count(" not in expr:
        expr = expr.replace(",", "")  # "1,234 * 2" as people write it
    try:
        tree = ast.parse(expr, mode="eval")
        value = _evaluate(tree, time.monotonic() + CALC_TIME_LIMIT_S)
    except (CalculatorRefusal, SyntaxError, ZeroDivisionError, OverflowError, ValueError, RecursionError):
        return None
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return None
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.6g}" if abs(value) >= 1e15 else str(round(value, 6))
    return str(value)


# ----------------------------------------------------------------------------------------------------------------
# KV cache (interface in docs/CONTRACTS.md: gpt.py calls get_pos() and insert_kv()).

class KVCache:
    def __init__(self, batch_size: int, num_heads: int, seq_len: int, head_dim: int, num_layers: int):
        self.shape = (num_layers, 2, batch_size, num_heads, seq_len, head_dim)
        self.num_layers = num_layers
        self.cache: torch.Tensor | None = None
        self.pos = 0

    def reset(self):
        self.pos = 0

    def get_pos(self) -> int:
        return self.pos

    def insert_kv(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor):
        if self.cache is None:
            self.cache = torch.empty(self.shape, dtype=k.dtype, device=k.device)
        t0, t1 = self.pos, self.pos + k.size(2)
        if t1 > self.cache.size(4):
            raise RuntimeError(f"KV cache full: {t1} > {self.cache.size(4)} positions")
        self.cache[layer_idx, 0, :, :, t0:t1] = k
        self.cache[layer_idx, 1, :, :, t0:t1] = v
        if layer_idx == self.num_layers - 1:
            self.pos = t1
        return self.cache[layer_idx, 0, :, :, :t1], self.cache[layer_idx, 1, :, :, :t1]

    def prefill_from(self, other: "KVCache"):
        """Copy a batch-1 prefilled cache into every row of this (larger-batch) cache."""
        assert other.cache is not None and self.cache is None
        n = other.pos
        self.cache = torch.zeros(self.shape, dtype=other.cache.dtype, device=other.cache.device)
        self.cache[:, :, :, :, :n] = other.cache[:, :, :1, :, :n]
        self.pos = n


def sample_next_token(logits: torch.Tensor, rng: torch.Generator, temperature: float = 1.0,
                      top_k: int | None = None) -> torch.Tensor:
    """logits (B, V) -> next tokens (B, 1); temperature 0 is greedy argmax."""
    if temperature == 0.0:
        return torch.argmax(logits, dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        values, indices = torch.topk(logits, top_k, dim=-1)
        probs = F.softmax(values, dim=-1)
        choice = torch.multinomial(probs, 1, generator=rng)
        return indices.gather(-1, choice)
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=rng)


def context_limit(model) -> int:
    """Positions the model can attend over (its rotary table): a prompt plus its reply must fit in it."""
    try:
        return int(model.cos.size(1))
    except AttributeError:  # a model without a rotary table: its configured context
        return int(model.config.sequence_len)


class _Row:
    def __init__(self, tokens):
        self.tokens = list(tokens)
        self.forced = deque()
        self.python_expr: list[int] | None = None
        self.done = False


class Engine:
    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        special = tokenizer.encode_special
        self.python_start, self.python_end = special("<|python_start|>"), special("<|python_end|>")
        self.output_start, self.output_end = special("<|output_start|>"), special("<|output_end|>")
        self.assistant_end, self.bos = special("<|assistant_end|>"), tokenizer.get_bos_token_id()

    def _new_cache(self, batch_size: int, seq_len: int) -> KVCache:
        cfg = self.model.config
        return KVCache(batch_size, cfg.n_kv_head, seq_len, cfg.n_embd // cfg.n_head, cfg.n_layer)

    @torch.inference_mode()
    def generate(self, tokens, num_samples=1, max_tokens=None, temperature=1.0, top_k=None, seed=42):
        """Yield (token_column, mask_column) per step for `num_samples` continuations of the prompt `tokens`.
        mask is 1 for sampled tokens and 0 for tokens forced by the calculator tool."""
        assert isinstance(tokens, list) and tokens and isinstance(tokens[0], int)
        device = next(self.model.parameters()).device
        rng = torch.Generator(device=device)
        rng.manual_seed(seed)
        cache_len = len(tokens) + (max_tokens if max_tokens is not None else self.model.config.sequence_len)
        prefill = self._new_cache(1, cache_len)
        logits = self.model.forward(torch.tensor([tokens], dtype=torch.long, device=device), kv_cache=prefill)
        logits = logits[:, -1, :].expand(num_samples, -1)
        cache = self._new_cache(num_samples, cache_len)
        cache.prefill_from(prefill)
        del prefill
        rows = [_Row(tokens) for _ in range(num_samples)]
        produced = 0
        while True:
            if max_tokens is not None and produced >= max_tokens:
                break
            if all(r.done for r in rows) or cache.get_pos() >= cache_len:
                break
            sampled = sample_next_token(logits, rng, temperature, top_k)[:, 0].tolist()
            column, masks = [], []
            for row, tok in zip(rows, sampled):
                forced = bool(row.forced)
                tok = row.forced.popleft() if forced else tok
                column.append(tok)
                masks.append(0 if forced else 1)
                row.tokens.append(tok)
                if tok in (self.assistant_end, self.bos):
                    row.done = True
                self._tool_step(row, tok)
            yield column, masks
            produced += 1
            logits = self.model.forward(torch.tensor(column, dtype=torch.long, device=device)[:, None],
                                        kv_cache=cache)[:, -1, :]

    def _tool_step(self, row: _Row, tok: int):
        if tok == self.python_start:
            row.python_expr = []
        elif tok == self.python_end and row.python_expr is not None:
            result = use_calculator(self.tokenizer.decode(row.python_expr))
            if result is not None:
                row.forced.extend([self.output_start, *self.tokenizer.encode(result), self.output_end])
            row.python_expr = None
        elif row.python_expr is not None:
            row.python_expr.append(tok)

    def generate_batch(self, tokens, num_samples=1, **kwargs):
        """Run generate() to completion; returns (token lists, mask lists) of prompt+completion, without the
        terminating <|assistant_end|>/<|bos|> token."""
        results = [list(tokens) for _ in range(num_samples)]
        masks = [[0] * len(tokens) for _ in range(num_samples)]
        finished = [False] * num_samples
        for column, mask_column in self.generate(tokens, num_samples, **kwargs):
            for i, (tok, m) in enumerate(zip(column, mask_column)):
                if finished[i]:
                    continue
                if tok in (self.assistant_end, self.bos):
                    finished[i] = True
                    continue
                results[i].append(tok)
                masks[i].append(m)
            if all(finished):
                break
        return results, masks
