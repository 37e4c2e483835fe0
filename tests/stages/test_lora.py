"""LoRA on a training stage (lm/stages/lora.py): from a pre-trained workdir, only the adapters
train and hold optimizer state; the base is written once, never changes, and resume works.
QLoRA keeps that base in 4 bits and serves what it trained."""

import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from lm import config as config_lib
from lm.interop import convert
from lm.model import Decoder, lora
from lm.parallel import mesh as mesh_lib
from lm.stages import train_and_evaluate
from lm.train import checkpoint as checkpoint_lib


def read(path: str) -> dict:
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(path)


def flat(tree) -> dict:
  return flax.traverse_util.flatten_dict(tree, sep="/")


def test_lora_trains_adapters_alone_on_a_frozen_base(make_config, tmp_path):
  base_dir, lora_dir = str(tmp_path / "base"), str(tmp_path / "lora")
  train_and_evaluate(make_config(train__steps=2, train__checkpoint_every=2), base_dir)
  base = flat(read(os.path.join(base_dir, "checkpoints", "2", "state"))["params"])

  def lora_config(**overrides):
    config = make_config(lora__rank=4, lora__alpha=8.0, train__lr=1e-2, **overrides)
    config.init_from = base_dir
    return config

  train_and_evaluate(lora_config(train__steps=2, train__checkpoint_every=2), lora_dir)
  frozen = flat(read(os.path.join(lora_dir, checkpoint_lib.FROZEN_DIR))["base"])
  saved = read(os.path.join(lora_dir, "checkpoints", "2", "state"))
  assert saved.get("frozen") is None                      # the base is not in checkpoints
  assert frozen.keys() == base.keys()
  for name, value in base.items():                        # the base, bitwise, never trained
    np.testing.assert_array_equal(frozen[name], value, err_msg=name)
  adapters = flat(saved["params"])
  assert adapters and all(lora.is_adapter(name) for name in adapters)
  assert len(adapters) == 2 * 7                           # q, k, v, o, up, gate, down
  assert all(np.asarray(v).any() for k, v in adapters.items() if k.endswith("_lora_b"))
  adapter_shapes = {np.shape(v) for v in adapters.values()}
  moments = [np.shape(x) for x in jax.tree.leaves(saved["opt_state"]) if np.ndim(x) > 1]
  assert moments and set(moments) <= adapter_shapes       # optimizer state: adapters only
  assert len(moments) == 2 * len(adapters)                # AdamW's mu and nu

  train_and_evaluate(lora_config(train__steps=3, train__checkpoint_every=1), lora_dir)
  resumed = read(os.path.join(lora_dir, "checkpoints", "3", "state"))
  frozen_after = flat(read(os.path.join(lora_dir, checkpoint_lib.FROZEN_DIR))["base"])
  for name, value in base.items():
    np.testing.assert_array_equal(frozen_after[name], value, err_msg=name)
  changed = [k for k, v in flat(resumed["params"]).items() if not np.array_equal(v, adapters[k])]
  assert any(k.endswith("_lora_a") for k in changed) and any(k.endswith("_lora_b") for k in changed)


def test_qlora_keeps_a_4_bit_base_and_serves_what_it_trained(make_config, tmp_path):
  """lora.quantize=nf4 (double quantization): frozen/ holds 4-bit codes for every weight
  matrix, training reads the dequantized base, and the engine's loader merges the adapters
  into that same dequantized base."""
  workdir = str(tmp_path)
  config = make_config(train__steps=2, train__checkpoint_every=2, lora__rank=4,
                       lora__quantize="nf4", lora__double_quant=True, train__lr=1e-2)
  train_and_evaluate(config, workdir)
  frozen = read(os.path.join(workdir, checkpoint_lib.FROZEN_DIR))["base"]
  codes = {k: v for k, v in flat(frozen).items() if k.endswith("codes")}
  assert "layers/mlp/wo/codes" in codes and "layers/attention/query/codes" in codes
  assert all(v.dtype == np.uint8 for v in codes.values())
  assert flat(frozen)["layers/mlp/wo/absmax"].dtype == np.int8         # double quantization
  assert flat(frozen)["embed/embedding"].dtype == np.float32           # not a matrix we quantize
  assert flat(frozen)["layers/mlp_norm/scale"].dtype == np.float32     # [L, D]: a vector a layer
  layers = config_lib.model_config(config).num_layers                  # each layer on its own
  assert flat(frozen)["layers/mlp/wo/codes"].shape[0] == layers
  # Two 4-bit codes a byte for every weight matrix of the model.
  shapes = flat(jax.eval_shape(lambda: Decoder(config_lib.model_config(config)).init(
      jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]))
  matrices = {k: v.value.size for k, v in shapes.items()   # one layer's is a matrix: not norms
              if v.value.ndim - k.startswith("layers/") >= 2 and "embedding" not in k}
  assert {k: v.size * 2 for k, v in codes.items()} == {k + "/codes": n
                                                        for k, n in matrices.items()}
  saved = config_lib.model_config(config)
  _, model_config, merged = checkpoint_lib.load_for_inference(workdir)
  assert model_config == saved
  params = read(os.path.join(workdir, "checkpoints", "2", "state"))["params"]
  mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  spec, adapters, base = checkpoint_lib.restore_adapters(
      workdir, convert.read_workdir_config(workdir), model_config, mesh)
  assert flat(adapters).keys() == flat(params).keys()
  w = np.asarray(flat(base)["layers/mlp/wo"])
  assert len(np.unique(w[0].reshape(-1)[:64])) <= 16  # one block of 64: 16 NF4 levels at most
  tokens = jnp.asarray(np.arange(24).reshape(2, 12) % 250, jnp.int32)
  ours = lora.adapt(Decoder(model_config), spec).apply(
      {"params": lora.join(adapters, base)}, tokens)
  served = Decoder(model_config).apply({"params": merged}, tokens)
  assert np.abs(np.asarray(ours) - np.asarray(served)).max() < 1e-4


def test_qlora_step_holds_one_layers_float_kernel_not_the_base(make_config):
  """XLA's memory analysis of the compiled step (lm plan): with the base in NF4, the step's
  temporaries exceed those of LoRA on a float32 base by at most a layer's float kernels (each
  weight is dequantized where its layer reads it, and again in the backward pass), not by the
  float copy of every layer's weights that dequantizing the whole base would add."""
  from lm import plan as plan_lib  # pylint: disable=import-outside-toplevel
  fields = dict(model__num_layers=8, model__d_model=128, model__d_ff=512, model__remat="none",
                train__batch_size=2, train__seq_len=32, lora__rank=4)
  lora_float = plan_lib.plan(make_config(**fields), compile_step=True)
  qlora = plan_lib.plan(make_config(**fields, lora__quantize="nf4"), compile_step=True)
  layers = 8
  matrices = qlora.num_frozen - 512 * 128 - (2 * layers + 1) * 128  # all but embedding, norms
  assert qlora.frozen < lora_float.frozen / 4                      # the codes are stored
  extra = qlora.compiled.temp - lora_float.compiled.temp
  assert extra < 2 * 4 * matrices / layers, (extra, 4 * matrices)  # < two layers' float32
