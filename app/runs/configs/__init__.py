"""Run configs as files and what is said about them: mlx_lm YAML both ways, warnings about combinations."""
