"""Tests for lm/train/profile.py: `train.profile_steps` traces exactly its steps."""

import glob
import os

import jax
import jax.numpy as jnp
import pytest

from lm.train import profile as profile_lib


def test_trace_of_a_step_range_is_written(tmp_path):
  profiler = profile_lib.Profiler("1:3", str(tmp_path))
  step = jax.jit(lambda x: jnp.sin(x) @ x)
  x = jnp.ones((64, 64))
  for i in range(5):
    profiler.before_step(i)
    x = step(x)
    profiler.after_step(i, x)
    assert profiler.active == (i == 1), i  # started before step 1, stopped after step 2
  profiler.close()
  traces = glob.glob(os.path.join(tmp_path, "profile", "plugins", "profile", "*", "*.xplane.pb"))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0


def test_no_range_traces_nothing(tmp_path):
  profiler = profile_lib.Profiler("", str(tmp_path))
  for i in range(3):
    profiler.before_step(i)
    profiler.after_step(i, None)
  profiler.close()
  assert not os.path.exists(os.path.join(tmp_path, "profile"))


@pytest.mark.parametrize("spec", ["10", "a:b", "5:5", "-1:3"])
def test_bad_ranges_name_the_field(spec):
  with pytest.raises(ValueError, match=r"train.profile_steps="):
    profile_lib.parse_steps(spec)


def test_range_reads_like_a_slice():
  assert profile_lib.parse_steps("10:15") == (10, 15)
  assert profile_lib.parse_steps("") is None
