"""lm: a JAX/Flax codebase for training, fine-tuning and serving large language models."""

__version__ = "0.1.0"
