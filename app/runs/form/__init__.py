"""The new-run form: its fields, groups and values driven by RunConfig, and the payload it sends."""
