import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lm import config as config_lib
from lm.model import Decoder, presets
from lm.train import optim
from lm.train import state as state_lib


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


# Every leaf name the presets have, by what it is; a new name must be placed here.
_PROJECTIONS = {"query", "key", "value", "out", "wi_gate", "wi_up", "wo", "embedding",
                "lm_head", "position_embedding"}
_NOT_DECAYED = {"scale", "bias", "query_bias", "key_bias", "value_bias", "out_bias",
                "wi_up_bias", "wo_bias"}


@pytest.mark.parametrize("preset", presets.names())
def test_decay_mask_of_every_scanned_preset(preset):
  """Norm scales/biases and projection biases never decay; every projection and embedding
  does, on the real (scanned) parameter tree of each preset (shapes only)."""
  config = presets.get(preset)
  assert config.scan_layers
  boxed = state_lib.abstract_boxed_params(Decoder(config))
  masks = {jax.tree_util.keystr(p): d for p, d in
           jax.tree_util.tree_flatten_with_path(optim.decay_mask(nn.unbox(boxed)))[0]}
  flat = jax.tree_util.tree_flatten_with_path(
      boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]
  seen = set()
  for path, leaf in flat:
    name = path[-1].key
    decayed = masks[jax.tree_util.keystr(path)]
    axes = leaf.names if isinstance(leaf, nn.Partitioned) else ()
    if name in _PROJECTIONS:
      assert decayed, (preset, jax.tree_util.keystr(path))
    else:
      assert name in _NOT_DECAYED, f"unclassified leaf {jax.tree_util.keystr(path)}"
      assert not decayed, (preset, jax.tree_util.keystr(path), axes)
    if "norm" in axes:
      assert not decayed
    seen.add(name)
  assert seen & {"scale"} and seen & _PROJECTIONS


def _restack(scanned_tree, num_layers):
  """A scanned tree's `layers` subtree as `layers_0..L-1` (the unrolled model's layout)."""
  tree = dict(scanned_tree)
  stacked = tree.pop("layers")
  for i in range(num_layers):
    tree[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return tree


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_scanned_and_unrolled_models_get_identical_updates(name):
  """Same weights and gradients, stacked [L, ...] or one tree per layer: bitwise the same
  updates over three steps (d_model 128 so that Adafactor factors the matrices)."""
  config = dataclasses.replace(presets.get("tiny"), d_model=128, d_ff=256, num_layers=3,
                               use_bias=True, attention_bias=True)
  num_layers = config.num_layers
  params = nn.unbox(state_lib.init_params(Decoder(config), jax.random.key(0)))
  unrolled_shapes = jax.eval_shape(lambda: nn.unbox(state_lib.init_params(
      Decoder(dataclasses.replace(config, scan_layers=False)), jax.random.key(0))))
  unrolled = _restack(params, num_layers)
  assert jax.tree.structure(unrolled) == jax.tree.structure(unrolled_shapes)
  # No global-norm clipping: the norm sums the same squares in another order (rounding).
  tx = optim.make_optimizer(train_config(optimizer=name, warmup_steps=0, weight_decay=0.1,
                                         grad_clip=0.0))
  update = jax.jit(tx.update)
  states = [tx.init(params), tx.init(unrolled)]
  leaves, treedef = jax.tree.flatten(params)
  for step in range(3):
    keys = jax.random.split(jax.random.key(step + 1), len(leaves))
    grads = jax.tree.unflatten(treedef, [
        jax.random.normal(k, x.shape) * (1 + i % 3) for i, (k, x) in enumerate(zip(keys, leaves))])
    u_scanned, states[0] = update(grads, states[0], params)
    u_unrolled, states[1] = update(_restack(grads, num_layers), states[1], unrolled)
    for a, b in zip(jax.tree.leaves(_restack(u_scanned, num_layers)),
                    jax.tree.leaves(u_unrolled)):
      np.testing.assert_array_equal(a, b)
    params = optax.apply_updates(params, u_scanned)
    unrolled = optax.apply_updates(unrolled, u_unrolled)


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_weight_decay_is_decoupled_and_follows_the_schedule(name):
  """Zero gradients: the update is -lr(step) * wd * param on matrices, 0 on norm scales and
  biases; 0 everywhere at step 0 where the warmup's rate is 0 (hand computation)."""
  config = train_config(optimizer=name, weight_decay=0.1, warmup_steps=10, lr=1e-2,
                        grad_clip=1.0)
  tx = optim.make_optimizer(config)
  params = {"layers": {"mlp": {"wo": jnp.full((2, 256, 128), 2.0),
                               "wo_bias": jnp.full((2, 128), 2.0)},
                       "mlp_norm": {"scale": jnp.full((2, 128), 2.0)}},
            "embed": {"embedding": jnp.full((300, 128), 3.0)}}
  zeros = jax.tree.map(jnp.zeros_like, params)
  state = tx.init(params)
  for step in range(6):
    updates, state = tx.update(zeros, state, params)
    lr = 1e-2 * step / 10  # warmup
    np.testing.assert_allclose(updates["layers"]["mlp"]["wo"], -lr * 0.1 * 2.0, rtol=1e-6)
    np.testing.assert_allclose(updates["embed"]["embedding"], -lr * 0.1 * 3.0, rtol=1e-6)
    np.testing.assert_array_equal(updates["layers"]["mlp"]["wo_bias"], 0.0)
    np.testing.assert_array_equal(updates["layers"]["mlp_norm"]["scale"], 0.0)
