"""Exports: adapters merged into full weights (``export merge``), GGUF files for llama.cpp / Ollama
(``export gguf``), bitsandbytes-quantized model dirs (``export quantize``) and CPU dynamic int8."""
