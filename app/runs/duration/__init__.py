"""A run's useful-token share and wall time, estimated before it starts from its data's token lengths and the
training speed that earlier runs on this machine recorded."""
