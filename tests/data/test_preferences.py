"""Preference data: records checked field by field (jsonl errors name file, line and field),
the built-in preference world's pairs and its true reward, and padded pair rows whose masks
cover exactly the reply (lm/data/preferences.py, lm/data/formats.py, lm/stages/pairs.py)."""

import json

import ml_collections
import numpy as np
import pytest

from lm import config as config_lib
from lm.data import formats, preferences, sources, tasks
from lm.data import tokenizer as tokenizer_lib
from lm.stages import pairs


def test_true_reward_orders_the_kinds_of_reply():
  assert preferences.true_reward("432", "432") == 2.0
  assert preferences.true_reward("432", "432, I hope that helps.") == pytest.approx(1.6)
  assert preferences.true_reward("432", "433") == 0.0
  assert preferences.true_reward("c b a", "c b a") == 2.0
  assert preferences.true_reward("c b a", "c b e") == 0.0
  assert preferences.true_reward("432", "432 honestly") == pytest.approx(-1.1)


def test_chosen_is_the_truly_better_reply_and_noise_swaps_the_set_fraction():
  clean = preferences.records("train", task_names=["add", "sort"])
  assert len(clean) == 2 * tasks.TRAIN_PER_TASK
  assert all(preferences.true_reward(r["answer"], r["chosen"])
             > preferences.true_reward(r["answer"], r["rejected"]) for r in clean)
  assert {r["kind"] for r in clean} == set(preferences.KINDS)
  noisy = preferences.records("train", noise=0.2, task_names=["add", "sort"])
  swapped = np.mean([n["chosen"] != c["chosen"] for n, c in zip(noisy, clean)])
  assert 0.18 < swapped < 0.22
  held_out = {r["prompt"] for r in preferences.records("eval")}
  assert not held_out & {r["prompt"] for r in preferences.records("train")}


def test_the_replies_of_a_pair_differ_only_in_what_its_kind_is_about():
  """Minimal pairs: correct-vs-wrong replies have the same form (length does not predict the
  preference); a concise or clean reply is the start of the reply it beats."""
  records = preferences.records("eval")
  for r in records:
    chosen, rejected = r["chosen"], r["rejected"]
    if r["kind"] == "correct":
      assert len(chosen.split()) == len(rejected.split()), r
      assert chosen.removeprefix(r["answer"]) == rejected[len(rejected) - len(chosen)
                                                           + len(r["answer"]):], r
    else:
      assert rejected.startswith(chosen + ", "), r   # never a space: lists continue with one
  numbers = [(int(r["answer"]), int(r["rejected"].split(",")[0]))
             for r in preferences.records("train") if r["kind"] == "correct"
             and r["answer"].isdigit()]
  assert 0.4 < np.mean([wrong > right for right, wrong in numbers]) < 0.6  # no "smaller wins"
  assert min(wrong for _, wrong in numbers) >= 0
  correct = [r for r in records if r["kind"] == "correct"]
  padded = np.mean(["," in r["chosen"] for r in correct])
  assert 0.3 < padded < 0.7


def data_config(tmp_path, source: str) -> ml_collections.ConfigDict:
  config = config_lib.base_config().data
  config.source, config.cache_dir = source, str(tmp_path / "cache")
  return config


@pytest.mark.parametrize("record, message", [
    ({"prompt": 3, "chosen": "a", "rejected": "b"}, "field 'prompt' must be a string"),
    ({"prompt": [{"role": "bot", "content": "x"}], "chosen": "a", "rejected": "b"},
     "field 'prompt', item 0"),
    ({"prompt": "q", "chosen": "", "rejected": "b"}, "field 'chosen' must be a non-empty"),
    ({"prompt": "q", "chosen": "a", "rejected": ["b"]}, "field 'rejected' must be"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "p_chosen": 1.5}, "field 'p_chosen'"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "margin": "1"}, "field 'margin'"),
    ({"prompt": "q", "chosen": "a"}, "no field 'rejected'"),
])
def test_malformed_jsonl_records_name_file_line_and_field(tmp_path, record, message):
  path = tmp_path / "pairs.jsonl"
  good = {"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
          "chosen": "a", "rejected": "b", "margin": 0.5, "p_chosen": 0.9}
  path.write_text(json.dumps(good) + "\n\n" + json.dumps(record) + "\n")
  with pytest.raises(ValueError, match=f"{path}:3: .*{message}"):
    sources.open_source(data_config(tmp_path, f"jsonl:{path}"), formats.PREFERENCE_FIELDS,
                        check=formats.preference_of)


def test_builtin_preferences_source_and_its_options(tmp_path):
  source = sources.open_source(data_config(tmp_path, "builtin:preferences:tasks=add+count"),
                               formats.PREFERENCE_FIELDS)
  assert {r["task"] for r in source.train} == {"add", "count"}
  assert len(source.eval) == 2 * tasks.EVAL_PER_TASK
  # kinds=: every prompt still gets a pair, now of those kinds only, train and held out; the
  # default draws exactly the pairs it drew before the option existed (a frozen sample).
  only = sources.open_source(data_config(tmp_path, "builtin:preferences:kinds=correct"),
                             formats.PREFERENCE_FIELDS)
  assert len(only.train) == len(preferences.records("train"))
  assert {r["kind"] for r in only.train} == {r["kind"] for r in only.eval} == {"correct"}
  assert [r["kind"] for r in preferences.records("eval")[:8]] == [
      "banned", "concise", "banned", "concise", "concise", "correct", "correct", "banned"]
  with pytest.raises(ValueError, match="kinds='correct\\+rude'"):
    sources.open_source(data_config(tmp_path, "builtin:preferences:kinds=correct+rude"),
                        formats.PREFERENCE_FIELDS)
  with pytest.raises(ValueError, match="unknown option 'nois'"):
    sources.open_source(data_config(tmp_path, "builtin:preferences:nois=0.1"), ("prompt",))
  with pytest.raises(ValueError, match="stage='reward' or 'dpo'"):
    sources.open_source(data_config(tmp_path, "builtin:preferences"), ("messages",))


def test_demonstrations_are_correct_and_carry_the_set_share_of_each_habit(tmp_path):
  """builtin:demos: every reply starts with the answer (an SFT model trained on them learns
  the tasks), a fraction `banned` of them says a banned word, a fraction `padded` of the
  others a pleasantry; their questions and split are the tasks' own."""
  source = sources.open_source(
      data_config(tmp_path, "builtin:demos:padded=0.5,banned=0.2,tasks=add+count"), ("messages",))
  records = list(source.train)
  assert [r["messages"][0] for r in records] == [
      r["messages"][0] for r in tasks.records("train", tasks=["add", "count"])]
  replies = [(r["answer"], r["messages"][1]["content"]) for r in records]
  words = [reply.replace(",", " ").split() for _, reply in replies]
  assert all(w[0] == answer for (answer, _), w in zip(replies, words))
  banned = np.mean([any(x in preferences.BANNED for x in w) for w in words])
  padded = np.mean([reply.endswith(preferences.PADDING) for _, reply in replies])
  bare = np.mean([reply == answer for answer, reply in replies])
  assert 0.18 < banned < 0.22 and 0.38 < padded < 0.42 and 0.38 < bare < 0.42
  assert banned + padded + bare == pytest.approx(1.0)
  assert len(source.eval) == 2 * tasks.EVAL_PER_TASK
  with pytest.raises(ValueError, match="unknown option 'pad'"):
    sources.open_source(data_config(tmp_path, "builtin:demos:pad=0.5"), ("messages",))
  with pytest.raises(ValueError, match="banned=1.5"):
    sources.open_source(data_config(tmp_path, "builtin:demos:banned=1.5"), ("messages",))
  with pytest.raises(ValueError, match="stage='sft'"):
    sources.open_source(data_config(tmp_path, "builtin:demos"), ())


def test_pair_rows_mask_exactly_the_reply_and_point_at_its_last_token():
  """The masked targets of each side decode to that reply and its end-of-turn token, the
  earlier assistant turn of a multi-turn prompt is context, and `last` is the reply's last
  token; padding is zeros, masked."""
  tokenizer = tokenizer_lib.ByteTokenizer()
  prompt = [{"role": "user", "content": "Add: 1+2"}, {"role": "assistant", "content": "3"},
            {"role": "user", "content": "Add: 10+20"}]
  row = pairs.PairRow(tokenizer, seq_len=64, truncate="cut")(
      {"prompt": prompt, "chosen": "30", "rejected": "31, I think", "margin": 1})
  end_of_turn = tokenizer.special_ids["<end_of_turn>"]
  for side, reply in (("chosen", "30"), ("rejected", "31, I think")):
    mask = row[f"{side}_loss_mask"] > 0
    expected = tokenizer.encode(reply).tolist() + [end_of_turn]
    assert row[f"{side}_targets"][mask].tolist() == expected
    full = tokenizer.render_chat(prompt + [{"role": "assistant", "content": reply}])
    n = len(full)
    assert row[f"{side}_inputs"][:n].tolist() == list(full)
    assert not row[f"{side}_inputs"][n:].any() and not mask[n - 1:].any()
    assert row[f"{side}_last"] == n - 1 and row[f"{side}_inputs"][n - 1] == end_of_turn
  assert row["margin"] == 1.0 and row["p_chosen"] == 1.0
  # reward.read_at="reply_end": the reply's own last token, before its end-of-turn token; a
  # cut one keeps its row's last token.
  record = {"prompt": prompt, "chosen": "30", "rejected": "31, I think"}
  at_end = pairs.PairRow(tokenizer, seq_len=64, truncate="cut", read_at="reply_end")(record)
  for side, char in (("chosen", "0"), ("rejected", "k")):
    assert tokenizer.decode([int(at_end[f"{side}_inputs"][at_end[f"{side}_last"]])]) == char
    assert at_end[f"{side}_inputs"][at_end[f"{side}_last"] + 1] == end_of_turn
  cut = pairs.PairRow(tokenizer, seq_len=32, truncate="cut", read_at="reply_end")(
      {"prompt": "q", "chosen": "a" * 40, "rejected": "b"})
  assert cut["chosen_last"] == 31


def test_long_replies_are_cut_or_the_pair_dropped():
  tokenizer = tokenizer_lib.ByteTokenizer()
  record = {"prompt": "q" * 10, "chosen": "a" * 100, "rejected": "b"}
  row = pairs.PairRow(tokenizer, seq_len=32, truncate="cut")(record)
  prompt_tokens = 1 + 1 + 10 + 1 + 1  # bos, user role, question, end of turn, assistant role
  assert row["chosen_loss_mask"].sum() == 32 - prompt_tokens  # the reply's first 18 tokens
  assert (row["chosen_targets"][row["chosen_loss_mask"] > 0] == ord("a")).all()
  assert row["chosen_last"] == 31
  assert pairs.PairRow(tokenizer, seq_len=32, truncate="drop")(record) is None
  assert pairs.PairRow(tokenizer, seq_len=12, truncate="cut")(record) is None  # no reply left
