"""Runs: their JSON API and pages, with the list, the new-run form, comparing, reports, event streams, YAML configs
and imports."""
