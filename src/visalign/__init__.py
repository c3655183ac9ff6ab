"""visalign: reinforcement-learning post-training for generative multimodal models."""

__version__ = "0.1.0"
