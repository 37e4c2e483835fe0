"""The sharded state and donated, jitted training step that `lm train` builds, for timing.

The benchmarks import it from beside themselves (`import lm_step`), so that each one times
exactly the step of lm/train/loop.py without repeating its set-up.
"""

import contextlib

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from lm import config as config_lib
from lm.model import Decoder
from lm.parallel import mesh as mesh_lib
from lm.parallel import rules as rules_lib
from lm.data import tokenizer as tokenizer_lib
from lm.stages import pretrain
from lm.train import loop
from lm.train import optim
from lm.train import state as state_lib


class TrainStep:
  """`step(batch)` advances `self.state` by one pre-training step and returns its metrics."""

  def __init__(self, config: ml_collections.ConfigDict):
    t = config.train
    model = Decoder(config_lib.model_config(config))
    tx = optim.make_optimizer(t)
    self.mesh = mesh_lib.make_mesh(config.mesh)
    self.rules = rules_lib.make_rules(config.mesh.rules)
    self.abstract_state, shardings = state_lib.state_shardings(model, tx, self.mesh, self.rules)
    self.data_sharding = rules_lib.batch_sharding(self.mesh)
    with self.context():
      self.state = state_lib.create_train_state(model, tx, jax.random.key(config.seed), shardings)
      stage = pretrain.Stage(config, tokenizer_lib.get(config.data.tokenizer))
      self._step = jax.jit(loop.make_train_step(model, tx, stage, t),
                           in_shardings=(shardings, self.data_sharding),
                           out_shardings=(shardings, rules_lib.replicated(self.mesh)),
                           donate_argnums=(0,))

  @contextlib.contextmanager
  def context(self):
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def put(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return {k: jax.device_put(v, self.data_sharding) for k, v in batch.items()}

  def __call__(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    with self.context():
      self.state, metrics = self._step(self.state, batch)
    return metrics
