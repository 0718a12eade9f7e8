"""The nanochat GPT: rotary attention with QK-norm, parameter-free RMSNorm, ReLU² MLP, untied head, logit softcap."""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from nanochat.softcap_loss import softcap_cross_entropy

HEAD_DIM = 128          # attention head size of the depth-sized models
DIM_PER_LAYER = 64      # model width = 64 · depth
LOGIT_SOFTCAP = 15.0    # logits = 15 · tanh(logits / 15)
ROTARY_BASE = 10000.0
ROTARY_LENGTH_FACTOR = 10  # rotary tables cover 10 × sequence_len positions (room for generation)


@dataclass
class GPTConfig:
    sequence_len: int = 1024
    vocab_size: int = 65536
    n_layer: int = 12
    n_head: int = 6      # number of query heads
    n_kv_head: int = 6   # number of key/value heads (GQA when smaller than n_head)
    n_embd: int = 768


def config_for_depth(depth: int, vocab_size: int = 65536, sequence_len: int = 1024) -> GPTConfig:
    """The depth-sized model of nanochat: width 64·depth, ceil(width/128) heads (head size 128 when it divides),
    n_kv_head = n_head. A width that the head count does not divide (d5: 320 / 3) is a ValueError, as upstream."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    dim = DIM_PER_LAYER * depth
    n_head = max(1, -(-dim // HEAD_DIM))  # ceiling division, as upstream: d3 = 2 heads of 96, d7 = 4 heads of 112
    if dim % n_head != 0:
        raise ValueError(f"model dim {dim} (depth {depth}) is not divisible into {n_head} heads")
    return GPTConfig(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=depth,
                     n_head=n_head, n_kv_head=n_head, n_embd=dim)


def norm(x):
    """Parameter-free RMSNorm over the last dimension."""
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary_emb(x, cos, sin):
    """Rotate pairs (first half, second half) of the head dimension of x [B, T, H, D] by the given angles."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


class KVCache:
    """Minimal key/value cache implementing the interface the attention layers use.

    Interface (what GPT.forward needs from any cache object):
      - `get_pos() -> int`: number of positions already cached (the absolute position of the first new token);
      - `insert_kv(layer_idx, k, v) -> (k_all, v_all)`: append k, v of shape [B, H_kv, T_new, D] for that layer and
        return all cached keys/values [B, H_kv, pos + T_new, D]; the position advances after the last layer.
    """

    def __init__(self, batch_size, num_heads, seq_len, head_dim, num_layers, device=None, dtype=torch.float32):
        self.kv = torch.zeros((num_layers, 2, batch_size, num_heads, seq_len, head_dim), device=device, dtype=dtype)
        self.num_layers = num_layers
        self.pos = 0

    def reset(self):
        self.pos = 0

    def get_pos(self) -> int:
        return self.pos

    def insert_kv(self, layer_idx, k, v):
        start, end = self.pos, self.pos + k.size(2)
        if end > self.kv.size(4):
            raise RuntimeError(f"KV cache full: {end} positions needed, {self.kv.size(4)} allocated")
        self.kv[layer_idx, 0, :, :, start:end] = k
        self.kv[layer_idx, 1, :, :, start:end] = v
        keys, values = self.kv[layer_idx, 0, :, :, :end], self.kv[layer_idx, 1, :, :, :end]
        if layer_idx == self.num_layers - 1:
            self.pos = end
        return keys, values


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.n_embd = config.n_embd
        self.head_dim = config.n_embd // config.n_head
        assert config.n_embd % config.n_head == 0, "n_embd must be divisible by n_head"
        assert config.n_head % config.n_kv_head == 0, "n_head must be a multiple of n_kv_head"
        self.c_q = nn.Linear(self.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(self.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(self.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(self.n_embd, self.n_embd, bias=False)

    def forward(self, x, cos_sin, kv_cache=None):
        B, T, _ = x.size()
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        cos, sin = cos_sin
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        q, k = norm(q), norm(k)  # QK-norm
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, D]
        if kv_cache is not None:
            k, v = kv_cache.insert_kv(self.layer_idx, k, v)
        t_query, t_key = q.size(2), k.size(2)
        gqa = self.n_head != self.n_kv_head
        if t_query == t_key:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        elif t_query == 1:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=False, enable_gqa=gqa)
        else:
            # new queries see the whole cached prefix plus the causal part of their own chunk
            prefix = t_key - t_query
            mask = torch.ones((t_query, t_key), dtype=torch.bool, device=q.device).tril(diagonal=prefix)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        y = y.transpose(1, 2).contiguous().view(B, T, -1)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x, cos_sin, kv_cache=None):
        x = x + self.attn(norm(x), cos_sin, kv_cache)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(config.vocab_size, config.n_embd),
            "h": nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
        })
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.rotary_seq_len = config.sequence_len * ROTARY_LENGTH_FACTOR
        # recompute each block's activations in the backward instead of keeping them (--activation_checkpointing)
        self.activation_checkpointing = False
        cos, sin = self._rotary_tables(self.rotary_seq_len, config.n_embd // config.n_head)
        # derived from the config, so not saved in checkpoints
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    # ---- initialisation ------------------------------------------------------------------------------------------

    def _rotary_tables(self, seq_len, head_dim, device=None):
        """cos/sin tables [1, seq_len, 1, head_dim/2] (bf16 on CUDA, fp32 elsewhere)."""
        if device is None:
            device = self.transformer.wte.weight.device
        inv_freq = 1.0 / (ROTARY_BASE ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
        positions = torch.arange(seq_len, dtype=torch.float32, device=device)
        angles = torch.outer(positions, inv_freq)
        cos, sin = angles.cos(), angles.sin()
        if torch.device(device).type == "cuda":
            cos, sin = cos.bfloat16(), sin.bfloat16()
        return cos[None, :, None, :], sin[None, :, None, :]

    @torch.no_grad()
    def init_weights(self):
        """Initialise all weights (call after moving the model off the meta device).

        Embedding ~ N(0, 1); lm_head ~ N(0, 0.001); input projections of every block (c_q, c_k, c_v, c_fc) are
        uniform with std 1/sqrt(n_embd); output projections (attn.c_proj, mlp.c_proj) start at zero so that every
        block is the identity at initialisation. On CUDA the embedding is kept in bf16.
        """
        n_embd = self.config.n_embd
        nn.init.normal_(self.transformer.wte.weight, mean=0.0, std=1.0)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)
        bound = math.sqrt(3.0) / math.sqrt(n_embd)  # uniform(-b, b) has std b/sqrt(3) = 1/sqrt(n_embd)
        for block in self.transformer.h:
            for linear in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(linear.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
        device = self.transformer.wte.weight.device
        cos, sin = self._rotary_tables(self.rotary_seq_len, n_embd // self.config.n_head, device)
        self.cos, self.sin = cos, sin
        if device.type == "cuda":
            self.transformer.wte.to(dtype=torch.bfloat16)

    # ---- accounting ----------------------------------------------------------------------------------------------

    def get_device(self):
        return self.transformer.wte.weight.device

    def num_params(self) -> int:
        """All parameters (what upstream prints as `Number of parameters` and uses for the tokens:params ratio)."""
        return sum(p.numel() for p in self.parameters())

    def num_scaling_params(self) -> int:
        """Parameters that cost matmul FLOPs: everything except the token embedding table."""
        return self.num_params() - self.transformer.wte.weight.numel()

    def estimate_flops(self) -> float:
        """Training FLOPs per token: 6·(N − embedding) + 12·L·H·D·T (attention over the full sequence_len)."""
        cfg = self.config
        head_dim = cfg.n_embd // cfg.n_head
        return float(6 * self.num_scaling_params() + 12 * cfg.n_layer * cfg.n_head * head_dim * cfg.sequence_len)

    # ---- optimisers ----------------------------------------------------------------------------------------------

    def setup_optimizers(self, unembedding_lr=0.004, embedding_lr=0.2, matrix_lr=0.02, weight_decay=0.0):
        """[AdamW for lm_head + embedding, Muon for block matrices]; Dist variants under multi-rank DDP.

        AdamW learning rates are scaled by (n_embd/768)^-0.5. Every param group gets `initial_lr`.
        """
        from nanochat.common import get_dist_info
        from nanochat.optim import DistAdamW, DistMuon, Muon

        ddp, _, _, _ = get_dist_info()
        matrix_params = list(self.transformer.h.parameters())
        embedding_params = list(self.transformer.wte.parameters())
        head_params = list(self.lm_head.parameters())
        assert len(matrix_params) + len(embedding_params) + len(head_params) == len(list(self.parameters()))
        scale = (self.config.n_embd / 768) ** -0.5
        adam_groups = [
            dict(params=head_params, lr=unembedding_lr * scale),
            dict(params=embedding_params, lr=embedding_lr * scale),
        ]
        adam_kwargs = dict(betas=(0.8, 0.95), eps=1e-10, weight_decay=weight_decay)
        if ddp:
            adamw = DistAdamW(adam_groups, **adam_kwargs)
            muon = DistMuon(matrix_params, lr=matrix_lr, momentum=0.95)
        else:
            fused = self.get_device().type in ("cuda", "cpu")  # one kernel per step instead of ~10 passes (as upstream)
            adamw = torch.optim.AdamW(adam_groups, fused=fused, **adam_kwargs)
            muon = Muon(matrix_params, lr=matrix_lr, momentum=0.95)
        optimizers = [adamw, muon]
        for opt in optimizers:
            for group in opt.param_groups:
                group["initial_lr"] = group["lr"]
        return optimizers

    # ---- forward -------------------------------------------------------------------------------------------------

    def forward(self, idx, targets=None, loss_reduction="mean", kv_cache=None):
        """Softcapped fp32 logits [B, T, vocab], or the fp32 cross-entropy loss when targets are given (-1 = ignore)."""
        B, T = idx.size()
        start = 0 if kv_cache is None else kv_cache.get_pos()
        if start + T > self.cos.size(1):
            raise ValueError(f"sequence of {start + T} positions exceeds the rotary table ({self.cos.size(1)})")
        cos_sin = (self.cos[:, start:start + T], self.sin[:, start:start + T])
        x = self.transformer.wte(idx)
        if x.dtype != self.lm_head.weight.dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(self.lm_head.weight.dtype)  # bf16 embedding (CUDA) used outside autocast
        x = norm(x)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled() and kv_cache is None
        for block in self.transformer.h:
            if recompute:
                x = torch.utils.checkpoint.checkpoint(block, x, cos_sin, use_reentrant=False)
            else:
                x = block(x, cos_sin, kv_cache)
        x = norm(x)
        logits = self.lm_head(x)
        if targets is not None and not torch.compiler.is_compiling():
            # eager: one fused op (same value to fp32 rounding); compiled: the plain ops below, fused by inductor
            return softcap_cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), LOGIT_SOFTCAP,
                                         ignore_index=-1, reduction=loss_reduction)
        logits = logits.float()  # bf16 under autocast: softcap and loss in fp32 (as upstream)
        logits = LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=-1, reduction=loss_reduction)

    @torch.inference_mode()
    def generate(self, tokens, max_tokens, temperature=1.0, top_k=None, seed=42):
        """Naive streaming sampler (no KV cache): yields up to max_tokens new token ids after the prompt `tokens`."""
        assert isinstance(tokens, list) and len(tokens) > 0, "generate needs a non-empty list of token ids"
        device = self.get_device()
        generator = None
        if temperature > 0:
            generator = torch.Generator(device=device)
            generator.manual_seed(seed)
        ids = torch.tensor([tokens], dtype=torch.long, device=device)
        for _ in range(max_tokens):
            context = ids[:, -self.config.sequence_len:]
            logits = self.forward(context)[:, -1, :].float()
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            if temperature > 0:
                probs = F.softmax(logits / temperature, dim=-1)
                next_id = torch.multinomial(probs, num_samples=1, generator=generator)
            else:
                next_id = torch.argmax(logits, dim=-1, keepdim=True)
            ids = torch.cat((ids, next_id), dim=1)
            yield next_id.item()
