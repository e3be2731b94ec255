"""Evaluating checkpoints: test loss and perplexity, task accuracy, and which checkpoint to recommend."""
