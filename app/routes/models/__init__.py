"""Models: the picker and model information, the models loraboard writes (fuse, quantize, GGUF export), their JSON
API and pages."""
