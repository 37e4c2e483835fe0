"""LoRA adapters (lm/model/lora.py): exact at initialisation, only on the targeted weights,
with the base's logical axes, and a merge that computes what the adapted model computes."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.model import Decoder, lora, presets

TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 512, (2, 12)), jnp.int32)


def flat(tree):
  return flax.traverse_util.flatten_dict(tree, sep="/")


def adapted(scan_layers=True, remat="full", dtype="float32", **lora_fields):
  config = presets.get("tiny").replace(scan_layers=scan_layers, remat=remat, dtype=dtype)
  spec = lora.LoraConfig(**{"rank": 4, "alpha": 8.0, **lora_fields})
  model = lora.adapt(Decoder(config), spec)
  boxed = model.init(jax.random.key(0), TOKENS)["params"]
  return config, spec, model, boxed


@pytest.mark.parametrize("scan_layers, remat, dtype", [
    (True, "full", "float32"), (False, "none", "float32"), (True, "dots", "bfloat16")])
def test_at_initialisation_the_adapted_model_is_the_base_bitwise(scan_layers, remat, dtype):
  config, _, model, boxed = adapted(scan_layers, remat, dtype)
  params = nn.unbox(boxed)
  adapters, base = lora.split(params)
  assert flat(adapters) and all(lora.is_adapter(k) for k in flat(adapters))
  ours = model.apply({"params": params}, TOKENS)
  theirs = Decoder(config).apply({"params": base}, TOKENS)
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_adapters_sit_on_the_targeted_weights_with_their_axes_and_a_rank_axis():
  _, _, _, boxed = adapted(targets=r"attention/(query|value)$|mlp/wo$")
  axes = {k: v.names for k, v in flat(boxed).items() if lora.is_adapter(k)}
  shapes = {k: v.value.shape for k, v in flat(boxed).items() if lora.is_adapter(k)}
  assert sorted(axes) == sorted(f"layers/{w}_lora_{ab}" for w in
                                ("attention/query", "attention/value", "mlp/wo") for ab in "ab")
  assert axes["layers/attention/query_lora_a"] == ("layers", "embed", "lora_rank")
  assert axes["layers/attention/query_lora_b"] == ("layers", "lora_rank", "heads", "head_dim")
  assert axes["layers/attention/value_lora_b"] == ("layers", "lora_rank", "kv_heads", "head_dim")
  assert axes["layers/mlp/wo_lora_a"] == ("layers", "mlp", "lora_rank")
  assert shapes["layers/attention/query_lora_b"] == (2, 4, 4, 16)   # [L, R, N, H]
  assert shapes["layers/mlp/wo_lora_b"] == (2, 4, 64)               # [L, R, D]
  b = [v.value for k, v in flat(boxed).items() if k.endswith("_lora_b")]
  assert all(not np.asarray(x).any() for x in b)  # B starts at zero


def randomised(params, seed=1):
  """Every adapter leaf replaced by a random non-zero value (B included)."""
  rng = np.random.default_rng(seed)
  return flax.traverse_util.unflatten_dict(
      {k: (jnp.asarray(rng.normal(0, 0.05, v.shape), jnp.float32) if lora.is_adapter(k) else v)
       for k, v in flat(params).items()}, sep="/")


@pytest.mark.parametrize("scan_layers", [True, False])
def test_merged_weights_compute_what_the_adapters_compute(scan_layers):
  config, spec, model, boxed = adapted(scan_layers, "none")
  params = randomised(nn.unbox(boxed))
  ours = model.apply({"params": params}, TOKENS)
  base_only = Decoder(config).apply({"params": lora.split(params)[1]}, TOKENS)
  merged = Decoder(config).apply({"params": lora.merge(params, spec)}, TOKENS)
  assert float(jnp.abs(ours - base_only).max()) > 1e-2   # the adapters matter
  np.testing.assert_allclose(np.asarray(merged), np.asarray(ours), atol=2e-5)
  # One weight by hand: W + (alpha / rank) * A @ B, A and B flattened to matrices.
  f = flat(params)
  w, a, b = (np.asarray(f[f"{'layers' if scan_layers else 'layers_0'}/attention/out{s}"])
             for s in ("", "_lora_a", "_lora_b"))
  if scan_layers:
    w, a, b = w[0], a[0], b[0]
  expected = w.reshape(64, 64) + 2.0 * a.reshape(64, 4) @ b.reshape(4, 64)  # [N*H, D]
  got = flat(lora.merge(params, spec))[f"{'layers' if scan_layers else 'layers_0'}/attention/out"]
  got = np.asarray(got)[0] if scan_layers else np.asarray(got)
  np.testing.assert_allclose(got.reshape(64, 64), expected, rtol=1e-6, atol=1e-6)


def test_dropout_acts_only_when_a_dropout_key_is_given():
  _, _, model, boxed = adapted(dropout=0.5)
  params = randomised(nn.unbox(boxed))
  plain = model.apply({"params": params}, TOKENS)
  dropped = model.apply({"params": params}, TOKENS, rngs={"dropout": jax.random.key(3)})
  np.testing.assert_array_equal(np.asarray(plain), np.asarray(model.apply({"params": params},
                                                                          TOKENS)))
  assert float(jnp.abs(plain - dropped).max()) > 1e-3


def test_bad_lora_fields_are_named():
  from lm import config as config_lib  # pylint: disable=import-outside-toplevel
  section = config_lib.base_config().lora
  section.rank, section.alpha, section.targets = 4, -1.0, "attention/("
  with pytest.raises(ValueError) as info:
    lora.from_config(section)
  assert "lora.alpha=-1.0" in str(info.value) and "lora.targets='attention/('" in str(info.value)
  section.alpha, section.targets = 8.0, "nothing_matches"
  assert lora.from_config(section).scale == 2.0
