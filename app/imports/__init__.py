"""Runs trained outside loraboard, with the `mlx_lm lora` CLI: their adapter folders and logs."""
