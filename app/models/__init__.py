"""Models loraboard writes: fused checkpoints and quantized copies (registry, requests, archive download)."""
