"""Decodes a workdir on the (1, 1, 2) and (2, 1, 1) meshes of 2 forced CPU devices.

  XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m tests.infer.mesh_worker SPEC

Prints `RESULT {mesh: {"completions": [...], "cache_shape": ..., "cache_shard_shape": ...}}`.
"""

import json
import sys

import jax

from lm.infer.engine import Engine
from lm.infer.sampling import GREEDY
from lm.parallel import mesh as mesh_lib


def prefill_cache(engine: Engine, prompts):
  """The cache after the prefill, as generate builds it (reaches into the engine's steps)."""
  # pylint: disable=protected-access
  _, _, tokens, start, rows, shapes, statics = engine._prepare(prompts, 4, GREEDY, 0, [], ())
  rows, tokens, start = engine._place(rows, tokens, start)
  with engine._context():
    return engine._prefill(engine.params, tokens, start, rows, **shapes, **statics).cache


def main(spec: dict) -> None:
  assert jax.device_count() == 2, jax.devices()
  out = {}
  for shape in ((1, 1, 2), (2, 1, 1)):
    mesh = mesh_lib.make_mesh(dict(zip(mesh_lib.AXES, shape)))
    engine = Engine.from_workdir(spec["workdir"], mesh=mesh)
    completions = engine.generate(spec["prompts"], max_new_tokens=spec["max_new"],
                                  sampling=GREEDY, stop_token_ids=[])
    key = prefill_cache(engine, spec["prompts"]).key[0]  # layer 0: [B, K, S, H]
    out["x".join(map(str, shape))] = {
        "completions": [{"tokens": c.tokens, "logprobs": c.logprobs} for c in completions],
        "cache_shape": list(key.shape),
        "cache_shard_shape": list(key.addressable_shards[0].data.shape)}
  print("RESULT " + json.dumps(out))


if __name__ == "__main__":
  main(json.loads(sys.argv[1]))
