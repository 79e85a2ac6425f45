"""Model modules: CLAP (`clap`), CLIP-Adapter, zero-shot, multi-encoder and the multimodal protocol."""
