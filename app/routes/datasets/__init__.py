"""Datasets: their JSON API and pages, with the dataset tools (token statistics, subsets and splits)."""
