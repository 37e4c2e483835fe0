"""Tests for lm/eval: exact match, multiple choice and perplexity against independent
computations on a tiny random model; `lm eval` end to end."""

import functools
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from lm.data import tasks
from lm.eval import choice
from lm.eval import exact_match
from lm.eval import perplexity
from lm.eval import run as eval_run
from lm.model import Decoder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LENGTH = 64  # the one padded shape of the reference forward passes


@functools.cache
def _forward(config):
  return jax.jit(lambda params, tokens: Decoder(config).apply({"params": params}, tokens))


def reference_logprobs(engine, tokens):
  """log-softmax [len(tokens), V] of one unbatched forward pass (float64 on the host)."""
  padded = np.zeros((1, LENGTH), np.int32)
  padded[0, :len(tokens)] = tokens
  logits = np.asarray(_forward(engine.config)(engine.params, padded)[0, :len(tokens)], np.float64)
  logits -= logits.max(-1, keepdims=True)
  return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def hand_prompt(tok, question):
  """The byte template written out: <bos> <user> question <end_of_turn> <assistant>."""
  s = tok.special_ids
  return [tok.bos_id, s["<user>"], *question.encode(), s["<end_of_turn>"], s["<assistant>"]]


def greedy_reference(engine, prompt, max_new):
  """Greedy text by repeated full forward passes, until end of turn / eos or max_new."""
  stops = {engine.tokenizer.special_ids["<end_of_turn>"], engine.tokenizer.eos_id}
  tokens = list(prompt)
  for _ in range(max_new):
    token = int(reference_logprobs(engine, tokens)[-1].argmax())
    if token in stops:
      break
    tokens.append(token)
  return engine.tokenizer.decode(tokens[len(prompt):])


def test_exact_match_scores_replies_it_decodes(eval_engine):
  records = tasks.records("eval", tasks=["count"])[:4]
  expected = [greedy_reference(eval_engine, hand_prompt(eval_engine.tokenizer,
                                                        r["messages"][0]["content"]), 6)
              for r in records]
  # Records 0 and 2 ask for exactly what the model replies (padded with spaces, which the
  # comparison strips); 1 and 3 for something else.
  forced = [dict(r, answer=f" {text} " if i % 2 == 0 else text + "x")
            for i, (r, text) in enumerate(zip(records, expected))]
  replies = exact_match.replies(eval_engine, forced, batch_size=2, max_new_tokens=6)
  assert replies == expected
  result = exact_match.score(forced, replies)["count"]
  assert (result["correct"], result["total"], result["accuracy"]) == (2, 4, 0.5)
  assert [e["correct"] for e in result["examples"]] == [True, False, True]


def test_exact_match_score_strips_whitespace_and_groups_by_task():
  records = [{"messages": [], "task": "a", "answer": "12"}, {"messages": [], "task": "b",
                                                               "answer": "x y"},
             {"messages": [], "task": "a", "answer": "3"}]
  records = [dict(r, messages=[{"role": "user", "content": "q"}]) for r in records]
  result = exact_match.score(records, ["12\n", "x  y", "3 "])
  assert result["a"]["accuracy"] == 1.0 and result["b"]["accuracy"] == 0.0


def test_multiple_choice_items_hold_the_answer_and_near_misses():
  records = tasks.records("eval", tasks=["add", "sort", "lookup"])
  items = choice.items_from_records(records, seed=3)
  assert items == choice.items_from_records(records, seed=3)
  labels = [item["label"] for item in items]
  assert len(set(labels)) == 4  # the right answer is not always in one place
  for record, item in zip(records, items):
    answer = record["answer"]
    assert item["options"][item["label"]] == answer
    assert len(set(item["options"])) == 4
    assert item["messages"] == record["messages"][:1]
    distractors = [o for o in item["options"] if o != answer]
    if record["task"] == "add":  # off by one or ten, or a digit more or less
      assert all(abs(int(o) - int(answer)) in (1, 10) or o in (answer + "0", answer[:-1])
                 for o in distractors), item
    if record["task"] == "sort" and len(set(answer.split())) >= 3:  # >= 6 orders
      assert all(sorted(o.split()) == answer.split() for o in distractors), item


def test_multiple_choice_picks_the_most_likely_option(eval_engine):
  tok = eval_engine.tokenizer
  items = choice.items_from_records(tasks.records("eval", tasks=["sort", "units"]))[::12]
  got = choice.option_logprobs(eval_engine, items, batch_size=8)
  end_of_turn = tok.special_ids["<end_of_turn>"]
  for item, scores in zip(items, got):
    prompt = hand_prompt(tok, item["messages"][0]["content"])
    for option, value in zip(item["options"], scores):
      continuation = [*option.encode(), end_of_turn]  # the reply and its end of turn
      logprobs = reference_logprobs(eval_engine, prompt + continuation)
      expected = logprobs[np.arange(len(prompt) - 1, len(prompt) + len(continuation) - 1),
                          continuation].sum()
      assert value == pytest.approx(expected, abs=1e-4)
  # Label every item with its most likely option, then with another one.
  best = [dict(item, label=int(np.argmax(s))) for item, s in zip(items, got)]
  assert choice.score(best, got)["sort"]["accuracy"] == 1.0
  worst = [dict(item, label=int(np.argmin(s))) for item, s in zip(items, got)]
  assert choice.score(worst, got)["units"]["correct"] == 0


def test_windows_predict_every_token_once():
  tokens = list(range(23))
  for max_len in (2, 5, 8, 23, 40):
    windows = perplexity.document_windows(tokens, max_len)
    assert all(len(p) + len(c) <= max_len for p, c in windows)
    assert [t for _, c in windows for t in c] == tokens[1:]
    assert all(p == [c_prev[-1]] for (p, _), (_, c_prev) in zip(windows[1:], windows))


def test_perplexity_and_bits_per_byte(eval_engine):
  documents = ["The cat sat.", "Ünïcode bytes: ∑"]
  result = perplexity.evaluate(eval_engine, documents)
  nll, tokens = 0.0, 0
  for text in documents:
    ids = [eval_engine.tokenizer.bos_id, *text.encode(), eval_engine.tokenizer.eos_id]
    logprobs = reference_logprobs(eval_engine, ids)
    nll -= logprobs[np.arange(len(ids) - 1), ids[1:]].sum()
    tokens += len(ids) - 1
  num_bytes = len("\n".join(documents).encode()) + 1  # one byte per document end
  assert (result["tokens"], result["bytes"], result["documents"]) == (tokens, num_bytes, 2)
  assert result["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
  assert result["bits_per_byte"] == pytest.approx(nll / math.log(2) / num_bytes, rel=1e-5)


def _lm(*args):
  return subprocess.run([sys.executable, "-m", "lm", "eval", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300, check=False)


def test_cli_writes_results_and_prints_the_table(eval_workdir, tmp_path):
  text = tmp_path / "doc.txt"
  text.write_text("A short held-out document.\n")
  output = tmp_path / "out" / "results.json"
  run = _lm(f"--workdir={eval_workdir}", "--tasks=lookup,count", f"--source=text:{text}",
            f"--output={output}")
  assert run.returncode == 0, run.stderr
  results = json.loads(output.read_text())
  assert results["tasks"] == ["lookup", "count"]
  assert set(results["exact_match"]) == set(results["multiple_choice"]) == {"lookup", "count"}
  for per_task in results["exact_match"].values():
    assert per_task["total"] == tasks.EVAL_PER_TASK
  assert results["perplexity"]["documents"] == 1 and results["perplexity"]["source"].startswith(
      "text:")
  lines = run.stdout.splitlines()
  lines = lines[[line.startswith("task ") for line in lines].index(True):]  # after TFDS's notes
  assert lines[0].split() == ["task", "exact", "match", "multiple", "choice"]
  assert [line.split()[0] for line in lines[1:4]] == ["lookup", "count", "mean"]
  assert "bits per byte" in run.stdout


def test_cli_rejects_an_unknown_task(eval_workdir):
  run = _lm(f"--workdir={eval_workdir}", "--tasks=add,nope")
  assert run.returncode == 2
  assert "--tasks: unknown built-in task 'nope'" in run.stderr and "Traceback" not in run.stderr


def test_perplexity_source_of_a_post_training_workdir_says_why_there_is_none(tmp_path):
  """An SFT workdir trained on chat records: no perplexity on them, and the note names the
  stage and the way out (--source), not pre-training's error about the records."""
  sft, pretrain = tmp_path / "sft", tmp_path / "pretrain"
  for workdir, stage, source in ((sft, "sft", "builtin:tasks"),
                                 (pretrain, "pretrain", "builtin:stdlib")):
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"stage": stage, "data": {"source": source}}))
  source, note = eval_run.perplexity_source(str(sft), None)
  assert source is None
  assert "stage='sft'" in note and "builtin:tasks" in note and "--source=" in note
  assert "pretrain" not in note
  assert eval_run.perplexity_source(str(sft), "text:doc.txt") == ("text:doc.txt", None)
  assert eval_run.perplexity_source(str(pretrain), None) == ("builtin:stdlib", None)
