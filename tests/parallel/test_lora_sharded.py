"""LoRA under FSDP and tensor parallelism on 8 CPU devices: the adapters are sharded with their
base weights, and training gives the single-device losses."""

import json

import jax
import pytest

from tests.parallel import worker
from tests.parallel.test_distributed import finish, losses, mesh_overrides, start_worker

LORA = {"lora.rank": 4, "lora.alpha": 8.0, "train.lr": 1e-2}
MESHES = [(1, 8, 1), (1, 4, 2)]


def test_sharded_lora_gives_the_single_device_losses(tmp_path, data_cache):
  assert jax.device_count() == 1
  from lm.stages import train_and_evaluate  # pylint: disable=import-outside-toplevel
  single = str(tmp_path / "single")
  train_and_evaluate(worker.make_config({**mesh_overrides((1, 1, 1), data_cache), **LORA}),
                     single)
  reference = losses(single)
  runs = [{"workdir": str(tmp_path / "x".join(map(str, mesh))),
           "overrides": {**mesh_overrides(mesh, data_cache), **LORA}} for mesh in MESHES]
  out = finish(start_worker({"runs": runs, "shards": {**mesh_overrides((1, 4, 2), data_cache),
                                                      **LORA}}, devices=8))
  assert len(reference) == 5 and len(set(reference.values())) > 1
  for mesh, run in zip(MESHES, runs):
    got = losses(run["workdir"])
    for step, expected in reference.items():
      assert got[step] == pytest.approx(expected, rel=1e-5), (mesh, step)
  layout = json.loads(out.split("LAYOUT ", 1)[1].splitlines()[0])
  # fsdp=4 splits `embed`, tensor=2 splits `heads` and `mlp`; the rank axis is replicated.
  expected = {"layers']['attention']['query_lora_a": [2, 16, 4],      # [L, D/4, R]
              "layers']['attention']['query_lora_b": [2, 4, 2, 16],   # [L, R, N/2, H]
              "layers']['mlp']['wo_lora_a": [2, 128, 4],              # [L, F/2, R]
              "layers']['mlp']['wo_lora_b": [2, 4, 16]}               # [L, R, D/4]
  for name, shard in expected.items():
    leaf = layout[f".params['{name}']"]
    assert leaf["devices"] == 8 and all(s == shard for s in leaf["shard_shapes"]), (name, leaf)
  assert not [p for p in layout if ".params" in p and "lora" not in p]  # the base is frozen
