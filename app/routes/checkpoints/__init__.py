"""A run's checkpoints: their JSON API and the pages that show and act on them."""
