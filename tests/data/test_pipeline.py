"""The grain pipeline: deterministic, lossless packing, disjoint per-process streams, exact
resume from a saved state in a new process."""

import collections
import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from lm import config as config_lib
from lm.data import pipeline
from lm.data import tokenizer as tokenizer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER = tokenizer_lib.get("byte")


def documents(n: int = 60, seed: int = 0) -> list[str]:
  """Tagged documents of varied length, a few longer than three rows."""
  rng = np.random.default_rng(seed)
  return [f"<{i:03d}>" + "".join(rng.choice(list("abcdefgh "), size=int(rng.integers(1, 150))))
          + ("x" * 120 if i % 17 == 0 else "") for i in range(n)]


def make_config(**overrides):
  config = config_lib.base_config()
  config.train.batch_size, config.train.seq_len = 8, 32
  for key, value in overrides.items():
    section, field = key.split(".")
    config[section][field] = value
  return config


def make_batches(rows=(0, 8), docs=None, seed=None, **overrides) -> pipeline.Batches:
  return pipeline.train_batches(documents() if docs is None else docs, TOKENIZER,
                                make_config(**overrides), slice(*rows), seed=seed)


def digest(batch: dict) -> str:
  return hashlib.sha256(b"".join(batch[k].tobytes() for k in sorted(batch))).hexdigest()[:16]


def take(batches: pipeline.Batches, n: int) -> list[dict]:
  out = [next(batches) for _ in range(n)]
  batches.close()
  return out


def test_same_seed_same_batches_and_another_seed_other_batches():
  first = [digest(b) for b in take(make_batches(), 5)]
  assert [digest(b) for b in take(make_batches(), 5)] == first
  assert [digest(b) for b in take(make_batches(seed=1), 5)] != first
  batch = take(make_batches(), 1)[0]
  assert set(batch) == {"inputs", "targets", "segment_ids", "positions", "loss_mask"}
  assert all(v.shape == (8, 32) for v in batch.values())


def test_packing_neither_loses_nor_duplicates_a_token():
  """Each epoch of rows holds exactly the (input, target) pairs of the tokenized documents."""
  docs = documents()
  pairs = sum(len(d.encode()) + 1 for d in docs)  # <bos> text <eos>: len + 1 pairs
  docs[-1] += "y" * (-pairs % 256)                 # one epoch = exactly k batches of 8 x 32
  corpus = collections.Counter()
  for doc in docs:
    ids = TOKENIZER.encode(doc, add_bos=True, add_eos=True)
    corpus.update(zip(ids[:-1].tolist(), ids[1:].tolist()))
  total = sum(corpus.values())
  assert total % 256 == 0 and any(len(d) > 3 * 32 for d in docs)
  per_epoch = total // 256
  batches = take(make_batches(docs=docs, **{"data.shuffle_rows": 0}), 2 * per_epoch)
  epochs = []
  for epoch in (batches[:per_epoch], batches[per_epoch:]):
    packed = collections.Counter()
    for batch in epoch:
      assert batch["loss_mask"].all()  # no padding in an endless stream
      packed.update(zip(batch["inputs"].ravel().tolist(), batch["targets"].ravel().tolist()))
    assert packed == corpus
    epochs.append(np.concatenate([b["inputs"].ravel() for b in epoch]))
  assert not np.array_equal(*epochs)  # the second epoch is another permutation


def test_packed_rows_are_shuffled_within_windows():
  """With windows of 16 rows, each pair of batches holds the rows of the unshuffled pair."""
  plain = take(make_batches(**{"data.shuffle_rows": 0}), 4)
  shuffled = take(make_batches(**{"data.shuffle_rows": 16}), 4)
  for window in (slice(0, 2), slice(2, 4)):
    rows = [sorted(map(bytes, np.concatenate([b["inputs"] for b in batches[window]])))
            for batches in (plain, shuffled)]
    assert rows[0] == rows[1]
  assert not np.array_equal(plain[0]["inputs"], shuffled[0]["inputs"])


def test_rows_restart_positions_at_every_document_and_row():
  for batch in take(make_batches(), 4):
    for inputs, targets, segments, positions in zip(
        batch["inputs"], batch["targets"], batch["segment_ids"], batch["positions"]):
      assert segments[0] == 1 and np.all(np.diff(segments) >= 0)
      starts = np.flatnonzero(np.diff(segments)) + 1
      assert positions[0] == 0 and np.all(positions[starts] == 0)
      assert np.all(inputs[starts] == TOKENIZER.bos_id)         # a new document begins
      same = np.diff(segments) == 0
      assert np.all(np.diff(positions)[same] == 1)
      assert np.all(inputs[1:][same] == targets[:-1][same])      # next-token pairs line up


def test_process_streams_are_disjoint_and_make_the_global_batch():
  unshuffled = {"data.shards": 2, "data.shuffle_rows": 0}  # rows stay within their epoch
  whole = take(make_batches(**unshuffled), 6)
  halves = [take(make_batches(rows=r, **unshuffled), 6) for r in ((0, 4), (4, 8))]
  for step, batch in enumerate(whole):
    for key, value in batch.items():
      np.testing.assert_array_equal(
          value, np.concatenate([halves[0][step][key], halves[1][step][key]]))
  # Within an epoch, each document is read by one stream only.
  tags = []
  for half in halves:
    rows = [TOKENIZER.decode(row) for batch in half for row in batch["inputs"]]
    tags.append({tag for row in rows for tag in re.findall(r"<\d{3}>", row)})
  assert tags[0] and tags[1] and not tags[0] & tags[1]


def test_streams_that_cut_across_a_process_are_an_error():
  with pytest.raises(ValueError, match=r"data.shards=2 cuts .* rows \[2:6\]"):
    make_batches(rows=(2, 6), **{"data.shards": 2})


@pytest.mark.parametrize("overrides", [
    {"data.num_threads": 2, "data.prefetch": 3},
    {"data.num_workers": 2, "data.prefetch": 0},
], ids=["threads", "worker_processes"])
def test_resume_from_saved_state_in_a_new_process(tmp_path, overrides):
  batches = make_batches(**overrides)
  for _ in range(5):
    next(batches)
  state_path = tmp_path / "state.json"
  state_path.write_text(json.dumps(batches.get_state()))
  expected = [digest(b) for b in take(batches, 4)]
  uninterrupted = [digest(b) for b in take(make_batches(**overrides), 9)][5:]
  assert expected == uninterrupted
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "tests", "data", "pipeline_worker.py"),
       str(state_path), "4", json.dumps(overrides)],
      env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT, capture_output=True, text=True,
      timeout=300, check=True).stdout
  assert out.split() == expected


def test_a_state_saved_for_other_streams_does_not_apply(tmp_path):
  state = make_batches().get_state()
  assert pipeline.why_not_resumable(make_batches(), state) is None
  reason = pipeline.why_not_resumable(make_batches(**{"train.seq_len": 16}), state)
  assert "seq_len 32 -> 16" in reason
  assert "no position" in pipeline.why_not_resumable(make_batches(), None)
  # Another held-out share, or an edited file, is another training split.
  reason = pipeline.why_not_resumable(make_batches(**{"data.eval_every_nth": 10}), state)
  assert reason == "changed: eval_every_nth 20 -> 10"
  (tmp_path / "a.txt").write_text("one")
  files = {"data.source": f"text:{tmp_path}/*.txt"}
  state = make_batches(**files).get_state()
  assert pipeline.why_not_resumable(make_batches(**files), state) is None
  os.utime(tmp_path / "a.txt", ns=(1, 10**18))
  assert "changed: files" in pipeline.why_not_resumable(make_batches(**files), state)


# Held-out documents with multi-byte characters, one longer than a row, one empty: 3 batches
# of 8 x 32 tokens, the last one padded.
HELD_OUT = ["[held out 0] Grüße aus Köln, naïve café", "[held out 1] " + "日本語のテキスト。" * 4,
            "[held out 2] ½ → ∞ and 🙂🎉", "",
            *(f"[held out {i}] " + "abc " * i for i in range(3, 12))]


def check_eval_set_scores_the_text(tokenizer, docs, **overrides) -> pipeline.EvalSet:
  """The eval set scores every token of every document once, in order, and counts the
  documents' UTF-8 bytes plus one per document end; the same whatever the streams."""
  config = make_config(**overrides)
  whole = pipeline.eval_set(docs, tokenizer, config, slice(0, 8))
  expected = [tokenizer.encode(d, add_bos=True, add_eos=True) for d in docs]
  scored = np.concatenate([b["targets"][b["loss_mask"] > 0] for b in whole.batches])
  np.testing.assert_array_equal(scored, np.concatenate([ids[1:] for ids in expected]))
  assert whole.tokens == len(scored) and whole.documents == len(docs)
  assert whole.bytes == len(("\n".join(docs) + "\n").encode("utf-8"))
  ends = np.flatnonzero(scored == tokenizer.eos_id)
  assert [tokenizer.decode(part) for part in np.split(scored, ends + 1)[:-1]] == docs
  for shards, processes in ((1, 1), (2, 1), (2, 2), (4, 2), (4, 4)):
    rows = 8 // processes
    config = make_config(**{**overrides, "data.shards": shards})
    parts = [pipeline.eval_set(docs, tokenizer, config, slice(p * rows, (p + 1) * rows))
             for p in range(processes)]
    assert {(p.tokens, p.bytes) for p in parts} == {(whole.tokens, whole.bytes)}
    for step, batch in enumerate(whole.batches):
      for key, value in batch.items():
        np.testing.assert_array_equal(
            value, np.concatenate([part.batches[step][key] for part in parts]))
  return whole


def test_eval_scores_the_held_out_text_once_whatever_the_streams():
  whole = check_eval_set_scores_the_text(TOKENIZER, HELD_OUT)
  assert len(whole.batches) == 3 and not whole.batches[-1]["loss_mask"][-1].any()  # padded
  for batch in whole.batches:
    assert all(v.shape == (8, 32) for v in batch.values())
  # The first data.eval_documents documents, whole.
  first = pipeline.eval_set(HELD_OUT, TOKENIZER, make_config(**{"data.eval_documents": 2}),
                            slice(0, 8))
  assert first.documents == 2 and first.bytes == len(("\n".join(HELD_OUT[:2]) + "\n").encode())
  assert len(first.batches) == 1 and first.tokens == first.bytes  # bytes + <eos>, no <bos>
