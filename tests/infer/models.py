"""A tiny model with parameters far from their init, built the same way in every process.

Default-initialised weights make nearly uniform next-token distributions, whose near-ties
would let float noise flip a greedy choice; noise of std 0.2 (norm scales around 1) gives
peaked, well-separated logits instead. Built from numpy, so a subprocess gets the same
parameters bit for bit.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lm import config as config_lib
from lm.model import Decoder, presets

TINY = presets.get("tiny")  # byte-level vocabulary (512 >= 263), float32, max_seq_len 512


def noise_params(cfg=TINY, seed: int = 0):
  shapes = nn.unbox(jax.eval_shape(Decoder(cfg).init, jax.random.key(0),
                                   jnp.zeros((1, 8), jnp.int32)))["params"]
  rng = np.random.default_rng(seed)

  def fill(path, shape):
    noise = rng.standard_normal(shape.shape).astype(np.float32)
    return (1.0 if path[-1].key == "scale" else 0.0) + 0.2 * noise

  return jax.tree_util.tree_map_with_path(fill, shapes)


def make_workdir(path: str, cfg_name: str = "tiny", seed: int = 0) -> str:
  """An lm workdir (config.json + params/) holding noise_params, as an import writes one."""
  # pylint: disable=import-outside-toplevel
  from lm.train import checkpoint
  config = config_lib.base_config()
  config.model.preset = cfg_name
  checkpoint.save_params(path, jax.tree.map(jnp.asarray, noise_params(presets.get(cfg_name), seed)))
  with open(f"{path}/config.json", "w", encoding="utf-8") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  return path
