"""Conversation datasets for midtraining, SFT and chat evaluation (real Hub loaders and offline synthetic tasks)."""
