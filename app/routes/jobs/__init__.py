"""Jobs of every kind: their JSON API, the /jobs page and the progress partial."""
