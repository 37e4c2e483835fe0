"""On 8 devices (XLA_FLAGS from the parent): an lm workdir imported for QLoRA a leaf at a time
(`import_leaf`, lm/stages/lora.py) against the whole float model quantized at once.

  python quant_import_worker.py WORKDIR
"""

import sys

import flax
import jax
import numpy as np

from lm import config as config_lib
from lm import stages
from lm.data import tokenizer as tokenizer_lib
from lm.interop import convert
from lm.model import Decoder, quant
from lm.parallel import mesh as mesh_lib
from lm.parallel import rules as rules_lib
from lm.train import checkpoint as checkpoint_lib
from lm.train import state as state_lib


def main(workdir: str) -> None:
  assert jax.device_count() == 8
  config = config_lib.base_config()
  config.model.preset = "tiny"
  config.stage = "sft"
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 4, 2
  config.lora.rank, config.lora.quantize, config.lora.double_quant = 4, "nf4", True
  model_config = config_lib.model_config(config)
  floats = jax.device_get(state_lib.init_params(Decoder(model_config), jax.random.key(3)))
  floats = flax.core.meta.unbox(floats)
  checkpoint_lib.save_params(workdir, floats)

  stage = stages.for_config(config)(config, tokenizer_lib.get("byte"))
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = rules_lib.make_rules("")
  _, shardings = state_lib.abstract_params_and_shardings(Decoder(model_config), mesh, rules)
  seen = []
  def leaf_fn(path, leaf):
    seen.append((path, type(leaf).__name__))
    return stage.import_leaf(path, leaf)
  loaded = convert.load_params(workdir, model_config, shardings, leaf_fn)
  assert len(seen) == len(jax.tree.leaves(floats)) and all(t == "ArrayImpl" for _, t in seen)

  flat = lambda t: flax.traverse_util.flatten_dict(t, sep="/")
  shapes = {k: v.shape for k, v in flat(floats).items()}
  whole = quant.quantize_tree(floats, shapes, "nf4", double_quant=True)  # on one host, at once
  got, want = flat(loaded), flat(whole)
  assert got.keys() == want.keys()
  quantized = 0
  for name, w in want.items():
    g = got[name]
    assert jax.tree.structure(g) == jax.tree.structure(w), name
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(w)):
      a, b = np.asarray(a), np.asarray(b)
      if a.dtype.kind == "f":  # double quantization's scales: sums in another order, 1 ulp
        np.testing.assert_allclose(a, b, rtol=1e-6, err_msg=name)
      else:                    # codes and (int8) absmaxes: bitwise
        np.testing.assert_array_equal(a, b, err_msg=name)
    quantized += isinstance(w, quant.Quantized)
  assert quantized == 8, quantized  # q, k, v, o, up, gate, down ([L, ...]) and lm_head
  codes = got["layers/mlp/wi_up"].codes          # [L, D * F / 2], D split 4 ways (fsdp)
  shard_shapes = {s.data.shape for s in codes.addressable_shards}
  print("CODES", codes.shape, sorted(shard_shapes), len(codes.sharding.device_set))
  assert shard_shapes == {(codes.shape[0], codes.shape[1] // 4)}
  # The stage's partition of the state's shardings places the codes the same way.
  _, frozen_shardings = stage.partition(state_lib.abstract_params_and_shardings(
      stage.make_model(model_config), mesh, rules)[1])
  assert flat(frozen_shardings["base"])["layers/mlp/wi_up"].codes == codes.sharding
  print("OK")


if __name__ == "__main__":
  main(sys.argv[1])
