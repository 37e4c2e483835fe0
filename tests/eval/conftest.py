"""One tiny workdir (noise parameters, byte tokenizer) and one engine for the eval tests."""

import json

import pytest

from lm.infer.engine import Engine
from tests.infer import models


@pytest.fixture(scope="session")
def eval_workdir(tmp_path_factory) -> str:
  workdir = models.make_workdir(str(tmp_path_factory.mktemp("eval_workdir")))
  with open(f"{workdir}/config.json", encoding="utf-8") as f:
    config = json.load(f)
  config["data"]["cache_dir"] = str(tmp_path_factory.mktemp("data_cache"))  # not ~/.cache
  with open(f"{workdir}/config.json", "w", encoding="utf-8") as f:
    json.dump(config, f)
  return workdir


@pytest.fixture(scope="session")
def eval_engine(eval_workdir) -> Engine:
  return Engine.from_workdir(eval_workdir)
