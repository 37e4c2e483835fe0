"""Mesh shapes, rule overrides and the checks that fail before compiling."""

import re

import jax
import pytest

from lm import config as config_lib
from lm.model import Decoder, presets
from lm.parallel import mesh as mesh_lib
from lm.parallel import rules as rules_lib
from lm.train import state as state_lib


def mesh_config(data, fsdp, tensor):
  return {"data": data, "fsdp": fsdp, "tensor": tensor}


@pytest.mark.parametrize("sizes, devices, shape", [
    ((-1, 1, 1), 8, (8, 1, 1)), ((2, -1, 2), 8, (2, 2, 2)), ((1, 4, 2), 8, (1, 4, 2)),
    ((1, 1, -1), 1, (1, 1, 1))])
def test_mesh_shape_fills_the_free_axis(sizes, devices, shape):
  assert mesh_lib.mesh_shape(mesh_config(*sizes), devices) == shape


@pytest.mark.parametrize("sizes, devices, message", [
    ((2, 2, 1), 8, "mesh.data * mesh.fsdp * mesh.tensor = 4 but there are 8 devices"),
    ((-1, -1, 1), 8, "more than one axis is -1"),
    ((0, 1, 1), 1, "mesh.data=0"),
    ((1, -1, 3), 8, "mesh.fsdp=-1 cannot fill 8 devices"),
    ((1, 1, -2), 8, "mesh.tensor=-2"),
])
def test_bad_meshes_name_the_fields(sizes, devices, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    mesh_lib.mesh_shape(mesh_config(*sizes), devices)


@pytest.mark.parametrize("config, devices, slices, shape", [
    (dict(data=1, fsdp=-1, tensor=1, dcn_data=4), 512, 4, (4, 128, 1)),
    (dict(data=2, fsdp=-1, tensor=2, dcn_data=2, dcn_fsdp=2), 64, 4, (4, 8, 2)),
    (dict(data=-1, fsdp=1, tensor=1), 8, 1, (8, 1, 1))])  # no dcn_* keys: one slice
def test_dcn_axes_multiply_data_and_fsdp(config, devices, slices, shape):
  assert mesh_lib.mesh_shape(config, devices, slices) == shape


@pytest.mark.parametrize("config, devices, slices, message", [
    (dict(data=-1, fsdp=1, tensor=1, dcn_data=2), 8, 1,
     "mesh.dcn_data * mesh.dcn_fsdp = 2 but there is 1 slice"),
    (dict(data=-1, fsdp=1, tensor=1), 8, 2,
     "mesh.dcn_data * mesh.dcn_fsdp = 1 but there are 2 slices"),
    (dict(data=-1, fsdp=1, tensor=1, dcn_fsdp=0), 8, 1, "mesh.dcn_fsdp=0"),
    (dict(data=1, fsdp=8, tensor=1, dcn_data=2), 8, 2,
     "mesh.data * mesh.fsdp * mesh.tensor = 8 but there are 4 devices in each of 2 slices"),
])
def test_bad_dcn_meshes_name_the_fields(config, devices, slices, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    mesh_lib.mesh_shape(config, devices, slices)


def test_one_process_is_one_slice():
  config = config_lib.base_config().mesh
  assert mesh_lib.make_mesh(config).shape == {"data": 1, "fsdp": 1, "tensor": 1}
  config.dcn_data = 2  # a process counts as a slice off TPU; this test has one
  with pytest.raises(ValueError, match=re.escape(
      "mesh.dcn_data * mesh.dcn_fsdp = 2 but there is 1 slice")):
    mesh_lib.make_mesh(config)


def test_rule_overrides_replace_single_entries():
  rules = dict(rules_lib.make_rules("kv_heads=, vocab=fsdp+tensor,embed=data"))
  assert rules["kv_heads"] is None
  assert rules["vocab"] == ("fsdp", "tensor")
  assert rules["embed"] == "data"
  assert rules["mlp"] == "tensor"  # untouched
  assert dict(rules_lib.make_rules("")) == dict(rules_lib.DEFAULT_RULES)


@pytest.mark.parametrize("text, message", [
    ("embedding=fsdp", "logical axis from"), ("embed", "logical=axes"),
    ("embed=model", "unknown mesh axes")])
def test_bad_rule_overrides_name_mesh_rules(text, message):
  with pytest.raises(ValueError, match=message) as info:
    rules_lib.make_rules(text)
  assert "mesh.rules" in str(info.value)


@pytest.fixture(scope="module")
def tiny_params():
  # tiny: d_model 64, 4 heads, 2 kv heads, d_ff 256, vocab 512
  return state_lib.abstract_boxed_params(Decoder(presets.get("tiny")))


@pytest.mark.parametrize("shape, rules, message", [
    (dict(data=1, fsdp=1, tensor=4), "", "model.num_kv_heads=2 is not divisible by mesh.tensor = 4"),
    (dict(data=1, fsdp=3, tensor=1), "", "model.d_model=64 is not divisible by mesh.fsdp = 3"),
    (dict(data=1, fsdp=1, tensor=8), "kv_heads=", "model.num_heads=4 is not divisible"),
    (dict(data=1, fsdp=1, tensor=3), "heads=,kv_heads=,vocab=", "model.d_ff=256"),
    (dict(data=3, fsdp=1, tensor=1), "vocab=data", "model.vocab_size=512"),
])
def test_indivisible_layouts_name_the_model_field(tiny_params, shape, rules, message):
  with pytest.raises(ValueError, match=message):
    rules_lib.check_divisible(tiny_params, shape, rules_lib.make_rules(rules))


def test_divisible_layouts_pass(tiny_params):
  for shape in (dict(data=8, fsdp=1, tensor=1), dict(data=1, fsdp=8, tensor=2),
                dict(data=2, fsdp=4, tensor=1)):
    rules_lib.check_divisible(tiny_params, shape, rules_lib.DEFAULT_RULES)
  # MQA on 2-way tensor parallelism works once kv heads are replicated.
  mqa = state_lib.abstract_boxed_params(Decoder(presets.get("tiny").replace(num_kv_heads=1)))
  with pytest.raises(ValueError, match="num_kv_heads=1"):
    rules_lib.check_divisible(mqa, dict(data=1, fsdp=1, tensor=2), rules_lib.DEFAULT_RULES)
  rules_lib.check_divisible(mqa, dict(data=1, fsdp=1, tensor=2),
                            rules_lib.make_rules("kv_heads="))


@pytest.mark.parametrize("changes, shape, message", [
    (dict(batch_size=12), dict(data=8, fsdp=1, tensor=1),
     "train.batch_size=12 / train.grad_accum=1 must be divisible by mesh.data * mesh.fsdp = 8"),
    (dict(batch_size=16, grad_accum=4), dict(data=2, fsdp=4, tensor=1),
     "train.batch_size=16 / train.grad_accum=4 must be divisible by mesh.data * mesh.fsdp = 8"),
    (dict(), dict(data=1, fsdp=1, tensor=8), "model.num_heads=4 is not divisible by mesh.tensor=8"),
    (dict(batch_size=12, dcn_data=2), dict(data=8, fsdp=1, tensor=1),
     "must be divisible by mesh.dcn_data * mesh.data * mesh.dcn_fsdp * mesh.fsdp = 8"),
])
def test_batch_and_heads_against_the_mesh(changes, shape, message):
  config = config_lib.base_config()
  if "dcn_data" in changes:
    config.mesh.dcn_data = changes.pop("dcn_data")
  config.train.update(changes)
  with pytest.raises(ValueError, match=re.escape(message)):
    config_lib.validate(config, presets.get("tiny"), 263, shape)


def test_process_rows_cover_the_local_devices():
  mesh = mesh_lib.make_mesh(mesh_config(-1, 1, 1))
  sharding = rules_lib.batch_sharding(mesh)
  assert rules_lib.process_rows(sharding, 8) == slice(0, 8)  # one process holds every row
  assert jax.process_count() == 1
