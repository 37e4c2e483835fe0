import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import config as config_lib
from lm.train import optim


def train_config(**changes):
  config = config_lib.base_config().train
  config.update({**dict(steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1), **changes})
  return config


def test_schedule_warms_up_then_decays_to_the_floor():
  schedule = optim.learning_rate_schedule(train_config())
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(5e-4)
  assert float(schedule(10)) == pytest.approx(1e-3)
  assert float(schedule(55)) == pytest.approx(1e-4 + 0.5 * 9e-4, rel=1e-5)  # cosine midpoint
  assert float(schedule(100)) == pytest.approx(1e-4)
  values = [float(schedule(s)) for s in range(10, 101)]
  assert all(a >= b for a, b in zip(values, values[1:]))


def test_adamw_decays_matrices_but_not_norm_scales():
  tx = optim.make_optimizer(train_config(weight_decay=0.5, warmup_steps=0, grad_clip=0.0))
  params = {"w": jnp.ones((2, 2)), "scale": jnp.ones((2,))}
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  assert np.all(np.asarray(updates["w"]) < 0)
  np.testing.assert_array_equal(updates["scale"], 0.0)


def test_unknown_optimizer_names_the_field():
  with pytest.raises(ValueError, match="train.optimizer='sgdd'"):
    optim.make_optimizer(train_config(optimizer="sgdd"))
