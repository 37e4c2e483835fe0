"""Soft labels: the arithmetic against hand numbers, and the label command's numbers against
the engine's own scores of the option tokens."""

import math

import numpy as np
import pytest

from lm.constitutional import constitution as constitution_lib
from lm.constitutional import labels
from lm.constitutional import prompts
from lm.infer import chat

CONSTITUTION = constitution_lib.load("synthetic")


def test_soft_label_by_hand():
  # p(A) = e^-1 / (e^-1 + e^-2) = 1 / (1 + e^-1)
  assert labels.soft_label(-1.0, -2.0) == pytest.approx(1 / (1 + math.exp(-1)), abs=1e-12)
  assert labels.soft_label(-2.0, -1.0) == pytest.approx(1 - 1 / (1 + math.exp(-1)), abs=1e-12)
  assert labels.soft_label(-700.0, -700.0) == 0.5                  # no underflow
  # log(0.9), log(0.1) -> 0.9, clamped to the paper's band 0.4-0.6
  assert labels.soft_label(math.log(0.9), math.log(0.1)) == pytest.approx(0.9)
  assert labels.soft_label(math.log(0.9), math.log(0.1), clamp=(0.4, 0.6)) == 0.6
  assert labels.soft_label(math.log(0.05), math.log(0.45), clamp=(0.4, 0.6)) == 0.4
  assert labels.soft_label(math.log(0.27), math.log(0.23), clamp=(0.4, 0.6)) == pytest.approx(
      0.54)
  np.testing.assert_allclose(labels.option_probabilities([[0.0, math.log(3.0)]]),
                             [[0.25, 0.75]])
  assert labels.ensemble([0.9, 0.6, 0.3]) == pytest.approx(0.6)


def test_both_orders_by_hand():
  # (a, b): p(A) = 0.8; (b, a): p(A) = 0.6, so p(a better) there is 0.4; the mean 0.6
  assert labels.both_orders(0.8, 0.6) == pytest.approx(0.6)
  # A feedback model that always answers (A) with 0.9 labels every pair 0.5: no preference
  assert labels.both_orders(0.9, 0.9) == pytest.approx(0.5)
  # log-probs of the options in each order -> soft labels -> their mean
  first = labels.soft_label(math.log(0.3), math.log(0.1))   # 0.75
  second = labels.soft_label(math.log(0.2), math.log(0.6))  # 0.25: b as (A) is worse
  assert (first, second) == (pytest.approx(0.75), pytest.approx(0.25))
  assert labels.both_orders(first, second) == pytest.approx(0.75)


def test_dpo_records_orient_pairs_by_the_label():
  records = [{"prompt": "p", "chosen": "a", "rejected": "b", "p_chosen": 0.2},
             {"prompt": "p", "chosen": "c", "rejected": "d", "p_chosen": 0.7},
             {"prompt": "p", "chosen": "e", "rejected": "f", "p_chosen": 0.55},
             {"prompt": "p", "chosen": "g", "rejected": "g", "skip": "equal replies"}]
  out = labels.dpo_records(records, min_confidence=0.6)
  assert [(r["chosen"], r["rejected"], r["p_chosen"]) for r in out] == [
      ("b", "a", pytest.approx(0.8)), ("c", "d", 0.7)]
  assert len(labels.preference_records(records)) == 3


def _p_first(engine, prompt, a, b, name) -> float:
  """p("(A)") against p("(B)") for the comparison showing `a` first, from the engine's
  log-probs of the two option strings directly."""
  conversation = prompts.comparison_messages(prompt, a, b, CONSTITUTION.principle(name))
  ids = chat.render(engine.tokenizer, conversation)
  la, lb = (float(np.sum(s)) for s in engine.score(
      [ids, ids], [list(engine.tokenizer.encode(o)) for o in prompts.OPTIONS]))
  return math.exp(la) / (math.exp(la) + math.exp(lb))


@pytest.mark.parametrize("both", [True, False])
def test_label_batch_matches_the_engines_option_scores(cai_engine, tmp_path, both):
  prompts_ = [[{"role": "user", "content": "Repeat: a heck b"}],
              [{"role": "system", "content": "Only math."}, {"role": "user", "content": "Q"}]]
  settings = labels.Settings(ensemble=2, both_orders=both, max_new_tokens=8, batch_size=4,
                             seed=3)
  out = labels.run(cai_engine, cai_engine, CONSTITUTION, prompts_, str(tmp_path / "l.jsonl"),
                   settings)
  assert [r["id"] for r in out] == [0, 1]
  assert sum("p_chosen" in r for r in out) >= 1
  for record in out:
    if "skip" in record:
      continue
    assert len(record["principles"]) == 2 and len(set(record["principles"])) == 2
    expected, orders = [], []
    for name in record["principles"]:
      a, b = record["chosen"], record["rejected"]
      p_ab = _p_first(cai_engine, record["prompt"], a, b, name)
      p_ba = 1 - _p_first(cai_engine, record["prompt"], b, a, name)   # p(a better), b first
      orders.append([p_ab, p_ba])
      expected.append((p_ab + p_ba) / 2 if both else p_ab)
    np.testing.assert_allclose(record["p_each"], expected, atol=1e-5)
    assert record["p_chosen"] == pytest.approx(np.mean(record["p_each"]))
    if both:
      np.testing.assert_allclose(record["p_orders"], orders, atol=1e-5)
      # the noise model has a position preference: the orders disagree, the mean corrects it
      assert max(abs(x - y) for x, y in orders) > 1e-3
    else:
      assert "p_orders" not in record
