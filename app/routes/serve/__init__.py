"""Serving a checkpoint or a model folder through mlx-lm's OpenAI-compatible server: its JSON API and its panel."""
