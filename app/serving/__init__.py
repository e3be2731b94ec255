"""Serving a checkpoint or a fused model through mlx-lm's OpenAI-compatible server (the `serve` job kind)."""
