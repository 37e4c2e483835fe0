"""Shared fixtures: one tiny workdir and one engine per session, so compiles are shared.

Tests keep to a few shapes (batch buckets 1, 2, 4; prompt buckets 8, 16; new-token buckets
8, 16, 32) so that the engine's programs compile once and are reused across files.
"""

import pytest

from lm.infer.engine import Engine
from tests.infer import models


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> str:
  return models.make_workdir(str(tmp_path_factory.mktemp("tiny_workdir")))


@pytest.fixture(scope="session")
def engine(workdir) -> Engine:
  return Engine.from_workdir(workdir)
