"""lm/config.py: a config.json written before a ModelConfig field existed still resolves."""

import json

import ml_collections

from lm import config as config_lib
from lm.model import presets


def test_a_workdir_config_without_a_newer_model_field_keeps_the_preset_value():
  config = config_lib.base_config()
  config.model.preset, config.model.num_layers = "tiny", 3
  stored = json.loads(config.to_json_best_effort())
  del stored["model"]["attention"]  # as in a workdir written before model.attention existed
  resolved = config_lib.model_config(ml_collections.ConfigDict(stored))
  assert resolved.num_layers == 3
  assert resolved.attention == presets.get("tiny").attention
