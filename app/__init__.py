"""loraboard: a local web dashboard for MLX LoRA fine-tuning (the web side; never imports mlx)."""
