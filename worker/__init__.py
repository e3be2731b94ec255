"""loraboard workers: one OS process per job; the only code that imports mlx."""
