"""Tests for lm/model/presets.py: published parameter counts and parameter axis names.

Shapes come from jax.eval_shape, so even llama3-70b is counted without allocating anything.
"""

import flax.linen as nn
import jax
import pytest

from lm.model import ModelConfig, presets

# Every logical axis name the model may use; lm/parallel's rules map these to mesh axes.
LOGICAL_AXES = {"layers", "vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "norm"}


def count(shapes) -> int:
  return sum(x.size for x in jax.tree.leaves(nn.unbox(shapes)))


@pytest.mark.parametrize("name", sorted(presets.PUBLISHED_PARAM_COUNTS))
def test_parameter_count_matches_published(name, param_shapes):
  assert count(param_shapes(presets.get(name))) == presets.PUBLISHED_PARAM_COUNTS[name]


def test_every_published_count_names_a_preset():
  assert set(presets.PUBLISHED_PARAM_COUNTS) <= set(presets.names())


def test_small_presets_exist_and_are_small(param_shapes):
  assert {"tiny", "quickstart"} <= set(presets.names())
  assert count(param_shapes(presets.get("tiny"))) < 1_000_000
  # The quickstart model trains on a laptop CPU: a few million parameters, byte-level.
  quickstart = presets.get("quickstart")
  assert count(param_shapes(quickstart)) < 10_000_000
  assert quickstart.vocab_size >= 256 + 1  # bytes plus special tokens


def test_get_returns_the_config_and_names_are_sorted():
  assert presets.names() == sorted(presets.names())
  for name in presets.names():
    assert isinstance(presets.get(name), ModelConfig)
  assert presets.get("llama3-8b").num_kv_heads == 8


def test_unknown_preset_lists_the_known_ones():
  with pytest.raises(ValueError) as error:
    presets.get("llama5-1t")
  message = str(error.value)
  assert "model.preset" in message and "llama5-1t" in message
  for name in presets.names():
    assert name in message


@pytest.mark.parametrize("name", presets.names())
def test_every_parameter_has_logical_axis_names(name, param_shapes):
  variables = param_shapes(presets.get(name))
  leaves = jax.tree_util.tree_leaves_with_path(
      variables, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves
  for path, leaf in leaves:
    where = jax.tree_util.keystr(path)
    assert isinstance(leaf, nn.LogicallyPartitioned), f"{where} has no logical axis names"
    assert len(leaf.names) == leaf.value.ndim, f"{where}: {leaf.names} vs {leaf.value.shape}"
    assert set(leaf.names) - {None} <= LOGICAL_AXES, f"{where}: unknown axis in {leaf.names}"
    # Only the learned position table's position axis may stay unnamed.
    if None in leaf.names:
      assert where.endswith("['position_embedding']") and leaf.names == (None, "embed"), where
    if presets.get(name).scan_layers and "['layers']" in where:
      assert leaf.names[0] == "layers", where
