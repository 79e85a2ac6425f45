"""Evaluation: novelty scores, metrics on collected logits, Avalanche plugin metrics, modality metrics."""
