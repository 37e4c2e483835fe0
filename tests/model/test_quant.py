"""NF4 and int8 blockwise quantization (lm/model/quant.py) against an independent NF4 code
book (QLoRA's construction from normal quantiles, with scipy) and per-block error bounds."""

import numpy as np
import pytest
from scipy import stats

from lm.model import quant


def nf4_levels() -> np.ndarray:
  """QLoRA's `create_normal_map(offset=0.9677083)`: 8 positive and 7 negative normal
  quantiles between the offset and 1/2, an exact zero, scaled to [-1, 1]."""
  offset = 0.9677083
  positive = stats.norm.ppf(np.linspace(offset, 0.5, 9)[:-1])
  negative = -stats.norm.ppf(np.linspace(offset, 0.5, 8)[:-1])
  levels = np.sort(np.concatenate([positive, [0.0], negative]))
  return levels / np.abs(levels).max()


def weights(shape=(96, 128), seed=0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  w = rng.normal(0, 0.02, shape).astype(np.float32)
  w[3, :64] *= 50.0   # a block with an outlier scale
  w[5, 64:] = 0.0     # an all-zero block
  return w


def test_the_nf4_table_is_qloras_normal_float():
  np.testing.assert_allclose(np.asarray(quant.NF4_LEVELS), nf4_levels(), atol=2e-7)


@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_round_trip_is_the_nearest_level_within_the_block_bound(double_quant):
  w = weights()
  q = quant.quantize(w, "nf4", block=64, double_quant=double_quant)
  back = np.asarray(quant.dequantize(q))
  assert back.shape == w.shape
  blocks, got = w.reshape(-1, 64), back.reshape(-1, 64)
  absmax = np.abs(blocks).max(axis=1, keepdims=True)
  levels = nf4_levels()
  half_gap = np.diff(levels).max() / 2
  # Independently: each value's nearest level, times its block's absmax.
  normalized = blocks / np.where(absmax == 0, 1, absmax)
  expected = levels[np.abs(normalized[..., None] - levels).argmin(-1)] * absmax
  error_of_absmax = 0.0
  if double_quant:
    centred = absmax[:, 0] - absmax.mean()
    error_of_absmax = np.abs(centred).max() / 254 + 1e-7
    assert quant.nbytes(q) < w.size * 4 / 7   # 4-bit codes, int8 scales: under 4.6 bits
  else:
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert quant.nbytes(q) == w.size // 2 + 4 * w.size // 64
  assert (np.abs(got - blocks) <= absmax * half_gap + error_of_absmax + 1e-6).all()
  assert (got[np.all(blocks == 0, axis=1)] == 0).all()   # an all-zero block stays zero


def test_int8_round_trip_within_half_a_step_per_block():
  w = weights(seed=1)
  q = quant.quantize(w, "int8", block=64)
  back = np.asarray(quant.dequantize(q)).reshape(-1, 64)
  blocks = w.reshape(-1, 64)
  absmax = np.abs(blocks).max(axis=1, keepdims=True)
  assert (np.abs(back - blocks) <= absmax / 254 * (1 + 1e-5) + 1e-8).all()
  np.testing.assert_allclose(back, np.round(blocks / np.where(absmax == 0, 1, absmax) * 127)
                             / 127 * absmax, atol=1e-7)


def test_bad_shapes_and_kinds_are_named():
  with pytest.raises(ValueError, match="blocks of 64"):
    quant.quantize(np.zeros((3, 7), np.float32))
  with pytest.raises(ValueError, match="kind='fp4'"):
    quant.quantize(np.zeros((64,), np.float32), "fp4")
