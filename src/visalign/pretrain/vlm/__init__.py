"""Supervised fine-tuning of the tiny ShapesWorld vision-language model (``configs/pretrain/vlm.yaml``)."""
