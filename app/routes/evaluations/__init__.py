"""Evaluations of a run's checkpoints: their JSON API and the run page's evaluate card, chart note and examples page."""
