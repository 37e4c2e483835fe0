"""Tests for lm/model/config.py: validation errors name the field, and what would be right."""

import dataclasses

import pytest

from lm.model.config import ModelConfig, model_config_fields


def error_for(**fields) -> str:
  with pytest.raises(ValueError) as error:
    ModelConfig(**fields)
  return str(error.value)


def test_defaults_and_presets_style_configs_are_valid():
  cfg = ModelConfig()
  assert cfg.resolved_head_dim == cfg.d_model // cfg.num_heads
  ModelConfig(num_heads=8, num_kv_heads=1)                           # MQA
  ModelConfig(d_model=96, num_heads=5, num_kv_heads=5, head_dim=32)  # D not divisible by N
  ModelConfig(d_model=20, num_heads=4, positions="learned")         # odd H without RoPE
  assert ModelConfig(head_dim=32).resolved_head_dim == 32


def test_num_heads_must_be_a_multiple_of_num_kv_heads():
  message = error_for(num_heads=6, num_kv_heads=4, d_model=96)
  assert "model.num_kv_heads" in message and "model.num_heads" in message
  assert "model.num_kv_heads" in error_for(num_heads=4, num_kv_heads=8)


@pytest.mark.parametrize("field,value", [("norm", "batchnorm"), ("mlp", "relu"),
                                         ("positions", "alibi"), ("rope_scaling", "yarn"),
                                         ("dtype", "int8"), ("remat", "everything")])
def test_unknown_kind_names_field_and_choices(field, value):
  message = error_for(**{field: value})
  assert f"model.{field}" in message and repr(value) in message
  allowed = {"norm": "rmsnorm", "mlp": "swiglu", "positions": "rope", "rope_scaling": "llama3",
             "dtype": "bfloat16", "remat": "dots"}[field]
  assert allowed in message  # says what would be right


@pytest.mark.parametrize("field", ["vocab_size", "d_model", "num_layers", "num_heads",
                                   "num_kv_heads", "d_ff", "max_seq_len"])
@pytest.mark.parametrize("value", [0, -8])
def test_sizes_must_be_positive(field, value):
  message = error_for(**{field: value})
  assert f"model.{field}={value}" in message


def test_negative_sliding_window():
  assert "model.sliding_window=-1" in error_for(sliding_window=-1)


def test_negative_head_dim():
  """0 means d_model // num_heads; a negative head_dim is meaningless."""
  assert "model.head_dim" in error_for(head_dim=-2)


def test_d_model_not_divisible_by_num_heads():
  message = error_for(d_model=100, num_heads=8)
  assert "model.d_model" in message and "model.head_dim" in message


@pytest.mark.parametrize("fields", [dict(head_dim=5), dict(d_model=20, num_heads=4)],
                         ids=["explicit", "derived"])
def test_rope_needs_even_head_dim(fields):
  message = error_for(**fields)
  assert "model.head_dim" in message and "5" in message


def test_all_errors_are_reported_together():
  message = error_for(vocab_size=0, norm="batchnorm", sliding_window=-1)
  for field in ("model.vocab_size", "model.norm", "model.sliding_window"):
    assert field in message


def test_replace_validates_and_config_is_frozen():
  cfg = ModelConfig()
  assert cfg.replace(num_layers=3).num_layers == 3 and cfg.num_layers == 2
  with pytest.raises(ValueError, match="model.num_kv_heads"):
    cfg.replace(num_kv_heads=3)
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.num_layers = 3
  assert hash(cfg) == hash(ModelConfig())  # usable as a cache / jit static key


def test_model_config_fields_types():
  types = model_config_fields()
  assert set(types) == {f.name for f in dataclasses.fields(ModelConfig)}
  assert types["num_layers"] is int and types["rope_theta"] is float
  assert types["scan_layers"] is bool and types["norm"] is str
