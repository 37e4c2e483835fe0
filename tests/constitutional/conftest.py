"""One tiny engine per session (noise parameters, byte tokenizer): compiles are shared."""

import pytest

from lm.infer.engine import Engine
from tests.infer import models


@pytest.fixture(scope="session")
def cai_engine(tmp_path_factory) -> Engine:
  return Engine.from_workdir(models.make_workdir(str(tmp_path_factory.mktemp("cai_tiny"))))
