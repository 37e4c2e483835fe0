"""lm: a JAX/Flax codebase for training, fine-tuning and serving large language models."""

__version__ = "0.1.0"


def __getattr__(name: str):
  """`lm.Client` and `lm.RewardModel` import the inference stack (and JAX) only when first used."""
  if name == "Client":
    from lm.infer.chat import Client  # pylint: disable=import-outside-toplevel
    return Client
  if name == "RewardModel":
    from lm.infer.reward import RewardModel  # pylint: disable=import-outside-toplevel
    return RewardModel
  raise AttributeError(f"module 'lm' has no attribute {name!r}")
