"""Loading parameters for inference reads the parameter subtree alone."""

import json

import jax
import numpy as np

from lm.train import checkpoint
from tests.infer import models


def test_load_for_inference_builds_no_optimizer(tmp_path):
  """A workdir whose config names an optimizer this code does not know still loads: only
  the parameters are restored, nothing of the optimizer is built."""
  workdir = models.make_workdir(str(tmp_path))
  path = tmp_path / "config.json"
  config = json.loads(path.read_text())
  config["train"]["optimizer"] = "an-optimizer-from-the-future"
  path.write_text(json.dumps(config))
  _, model_config, params = checkpoint.load_for_inference(workdir)
  assert model_config.vocab_size == models.TINY.vocab_size
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(models.noise_params())):
    np.testing.assert_array_equal(np.asarray(a), b)
