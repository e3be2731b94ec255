"""A run's peak memory, estimated from the model's files before it starts (and for a 4-bit copy of the model)."""
