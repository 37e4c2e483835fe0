"""Shared fixtures: one tokenized-corpus cache per session, small configs."""

import pytest

from lm import config as config_lib


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> str:
  """Corpora are tokenized once per test session, never into the user's cache."""
  return str(tmp_path_factory.mktemp("data_cache"))


@pytest.fixture(scope="session")
def make_config(data_cache):
  """A tiny, fast config; keyword overrides use `section__field=value` (a stateless factory,
  so session fixtures can use it too)."""

  def make(**overrides):
    config = config_lib.base_config()
    config.model.preset = "tiny"
    config.data.cache_dir = data_cache
    config.data.source = "synthetic:markov"
    t = config.train
    t.steps, t.batch_size, t.seq_len, t.lr, t.warmup_steps = 6, 8, 32, 3e-3, 2
    t.log_every, t.eval_every, t.checkpoint_every = 1, 1000, 1000
    config.data.eval_documents = 1
    for key, value in overrides.items():
      section, field = key.split("__")
      config[section][field] = value
    return config_lib.lock(config)

  return make
