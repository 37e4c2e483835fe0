"""Loads an HF directory sharded over the 8 CPU devices its parent forced, and reports.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.interop.shard_worker DIR

Prints `REPORT {json}`: per parameter its partition spec, global and per-device shapes, the
largest block read from disk for it, and whether it equals a one-device load; and the
largest logit difference between the sharded and the one-device model.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from lm.interop import hf
from lm.interop import safetensors_files as files
from lm.model import Decoder
from lm.parallel import mesh as mesh_lib


def main(directory: str) -> None:
  reads: dict[str, int] = {}
  read = files.Reader.read

  def logged_read(self, name, index):
    block = read(self, name, index)
    reads[name] = max(reads.get(name, 0), block.size)
    return block

  files.Reader.read = logged_read
  mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  config, params = hf.load(directory, mesh)
  files.Reader.read = read
  _, single = hf.load(directory, mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1},
                                                     jax.devices()[:1]))

  table = {t.lm: t for t in hf.FAMILIES[hf.family_for(config).model_type].tensors(config)}
  leaves = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    name = "/".join(k.key for k in path)
    t = table[name]
    names = [t.hf.format(i=i) for i in range(config.num_layers)] if t.per_layer else [t.hf]
    spec = [list(s) if isinstance(s, tuple) else s for s in leaf.sharding.spec]
    spec += [None] * (leaf.ndim - len(spec))
    leaves[name] = {
        "spec": spec, "shape": list(leaf.shape),
        "shard_shapes": [list(s.data.shape) for s in leaf.addressable_shards],
        "ways": len({str(s.index) for s in leaf.addressable_shards}),
        "largest_read": max(reads[n] for n in names),
        "equal_to_single_device_load": bool(np.array_equal(
            np.asarray(leaf), np.asarray(single_leaf(single, path))))}
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (2, 16)))
  model = Decoder(config)
  with jax.set_mesh(mesh):
    sharded_logits = jax.jit(lambda p, t: model.apply({"params": p}, t))(params, tokens)
  single_logits = model.apply({"params": single}, tokens)
  diff = float(np.abs(np.asarray(sharded_logits) - np.asarray(single_logits)).max())
  print("REPORT " + json.dumps({"devices": len(jax.devices()), "leaves": leaves,
                                "max_logit_diff": diff}))


def single_leaf(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree


if __name__ == "__main__":
  main(sys.argv[1])
