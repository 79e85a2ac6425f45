"""Frozen encoders: open_clip loading (`backbones`), prompt templates and class text features."""
