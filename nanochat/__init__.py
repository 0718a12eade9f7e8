"""nanochat: a nanochat-compatible training stack (tokenizer, GPT, Muon+AdamW, resumable training)."""
