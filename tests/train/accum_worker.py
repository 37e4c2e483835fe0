"""One SGD step (lr 1) with gradient accumulation on 2 forced CPU devices (data-parallel).

  XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m tests.train.accum_worker

The loss mask is uneven across micro-batches, so a mean of micro-batch means differs from the
token mean over the whole batch. Prints `RESULT {"<accum>": max |update + full-batch
gradient| / max |gradient|}`: the update of plain SGD at lr 1 is minus the gradient.
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lm import config as config_lib
from lm.data import tokenizer as tokenizer_lib
from lm.model import Decoder, presets
from lm.parallel import mesh as mesh_lib
from lm.parallel import rules as rules_lib
from lm.stages import pretrain
from lm.train import loop
from lm.train import state as state_lib

BATCH, LEN, ACCUM = 8, 16, 4


def make_batch() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  inputs = rng.integers(0, 512, (BATCH, LEN + 1), dtype=np.int32)
  mask = np.zeros((BATCH, LEN), np.int32)
  # Micro-batch i holds rows i and i + 4: token counts 32, 17, 2 and 0.
  for row, count in enumerate([16, 16, 2, 0, 16, 1, 0, 0]):
    mask[row, :count] = 1
  return {"inputs": inputs[:, :-1], "targets": inputs[:, 1:], "loss_mask": mask}


def full_batch_gradient(model, params, batch):
  """The token mean over the whole batch, written without the train step's code."""
  def loss(p):
    logits = model.apply({"params": p}, jnp.asarray(batch["inputs"]))
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(batch["targets"]))
    mask = jnp.asarray(batch["loss_mask"], jnp.float32)
    return jnp.sum(nll * mask) / jnp.sum(mask)
  return jax.grad(loss)(params)


def main() -> None:
  assert jax.device_count() == 2, jax.devices()
  config = config_lib.base_config()
  mesh = mesh_lib.make_mesh(dict(zip(mesh_lib.AXES, (2, 1, 1))))
  rules = rules_lib.make_rules("")
  model = Decoder(presets.get("tiny"))
  tx = optax.sgd(1.0)
  batch = make_batch()
  out, updates = {}, {}
  _, shardings = state_lib.state_shardings(model, tx, mesh, rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = state_lib.create_train_state(model, tx, jax.random.key(0), shardings)
    params = jax.device_get(state.params)
    data_sharding = rules_lib.batch_sharding(mesh)
    global_batch = {k: jax.device_put(v, data_sharding) for k, v in batch.items()}
    for accum in (1, ACCUM):
      config.train.grad_accum = accum
      stage = pretrain.Stage(config, tokenizer_lib.ByteTokenizer())
      step = jax.jit(loop.make_train_step(model, tx, stage, config.train),
                     in_shardings=(shardings, data_sharding))
      new_state, _ = step(state, global_batch)
      updates[accum] = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b),
                                    jax.device_get(new_state.params), params)
  expected = full_batch_gradient(model, params, batch)  # one device, no mesh
  scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(expected))
  for accum, update in updates.items():
    error = max(float(np.max(np.abs(u + g))) for u, g in
                zip(jax.tree.leaves(update), jax.tree.leaves(expected)))
    out[str(accum)] = error / scale
  print("RESULT " + json.dumps(out))


if __name__ == "__main__":
  main()
