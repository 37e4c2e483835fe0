"""Sources: local files and built-in corpora prepared once as TFDS ArrayRecord datasets, TFDS
catalog datasets read by index, and the decisions taken on bad input."""

import collections
import json
import math
import os
import time

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from lm import config as config_lib
from lm.data import sources


def test_stdlib_corpus_is_real_text_over_a_megabyte():
  docs = sources.stdlib_documents()
  text = "\n".join(docs)
  assert len(text.encode("utf-8")) > 1_000_000
  words = text.split()
  common = collections.Counter(w.lower() for w in words).most_common(10)
  assert "the" in dict(common)  # English prose, not code or noise
  assert sources.stdlib_documents() == docs  # same order every time


def test_markov_entropy_rate_matches_empirical_estimate():
  transitions, rate = sources.markov_chain(states=6, alpha=0.5, seed=3)
  np.testing.assert_allclose(transitions.sum(axis=1), 1.0, rtol=1e-12)
  assert 0 < rate < math.log(6)
  text = sources.markov_text(transitions, 200_000, seed=3)
  symbols = np.frombuffer(text.encode(), np.uint8) - ord("a")
  pairs = collections.Counter(zip(symbols[:-1].tolist(), symbols[1:].tolist()))
  firsts = collections.Counter(symbols[:-1].tolist())
  empirical = -sum(c / (len(symbols) - 1) * math.log(c / firsts[a]) for (a, _), c in pairs.items())
  assert abs(empirical - rate) < 0.02


def data_config(tmp_path, source: str, **overrides) -> ml_collections.ConfigDict:
  data = config_lib.base_config().data
  data.source, data.cache_dir = source, str(tmp_path / "cache")
  data.tfds_data_dir = str(tmp_path / "tfds")
  data.update(overrides)
  return data


def array_record_files(tmp_path) -> dict[str, int]:
  return {os.path.join(root, name): os.stat(os.path.join(root, name)).st_mtime_ns
          for root, _, names in os.walk(tmp_path / "cache") for name in names
          if "array_record" in name}


def test_text_source_is_prepared_once_reused_and_refreshed_by_edits(tmp_path):
  docs = [f"document number {i}\n" * (50 + i) for i in range(45)]
  for i, doc in enumerate(docs):
    (tmp_path / f"doc{i:02d}.txt").write_text(doc)
  data = data_config(tmp_path, f"text:{tmp_path}/*.txt")
  source = sources.open_source(data)
  # Every 20th document is held out; together the splits are exactly the files.
  assert len(source.train) == 43 and len(source.eval) == 2
  assert sorted(list(source.train) + list(source.eval)) == sorted(docs)
  assert sorted(source.eval) == sorted([docs[19], docs[39]])
  prepared = array_record_files(tmp_path)
  assert prepared

  again = sources.open_source(data)  # reused: the same files, not written again
  assert array_record_files(tmp_path) == prepared
  assert list(again.train) == list(source.train)

  (tmp_path / "doc00.txt").write_text("edited")
  os.utime(tmp_path / "doc00.txt", ns=(1, 10**18))
  edited = sources.open_source(data)
  assert "edited" in list(edited.train)
  assert len(array_record_files(tmp_path)) > len(prepared)


def test_a_single_file_is_split_into_train_and_held_out(tmp_path):
  text = "".join(f"line {i}\n" for i in range(2000))
  (tmp_path / "one.txt").write_text(text)
  source = sources.open_source(data_config(tmp_path, f"text:{tmp_path}/one.txt"))
  assert source.train[0] + source.eval[0] == text  # the last 1/20 is held out
  assert len(source.eval[0]) == len(text) // 20


def test_long_documents_become_several_records(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, "MAX_RECORD_CHARS", 1000)
  text = "".join(f"line {i:04d}\n" for i in range(1000))  # 10 chars a line
  (tmp_path / "long.txt").write_text(text)
  source = sources.open_source(data_config(tmp_path, f"text:{tmp_path}/long.txt",
                                           eval_every_nth=4))
  records = list(source.train) + list(source.eval)
  assert len(source.eval) == 2 and len(records) == 10 and all(r.endswith("\n") for r in records)
  assert sorted(records) == [text[i:i + 1000] for i in range(0, 10_000, 1000)]


def test_jsonl_reads_the_named_field(tmp_path):
  lines = [json.dumps({"body": f"text {i}", "id": i}) for i in range(40)]
  (tmp_path / "a.jsonl").write_text("\n".join(lines[:20]) + "\n\n")
  (tmp_path / "b.jsonl").write_text("\n".join(lines[20:]))
  source = sources.open_source(data_config(tmp_path, f"jsonl:{tmp_path}/*.jsonl",
                                           text_field="body"))
  assert sorted(list(source.train) + list(source.eval)) == sorted(f"text {i}" for i in range(40))
  with pytest.raises(ValueError, match=r"a.jsonl:1: no field data.text_field='text'"):
    sources.open_source(data_config(tmp_path, f"jsonl:{tmp_path}/*.jsonl"))
  (tmp_path / "c.jsonl").write_text('{"body": "fine"}\n{broken\n')
  with pytest.raises(ValueError, match=r"c.jsonl:2: not a JSON object"):
    sources.open_source(data_config(tmp_path, f"jsonl:{tmp_path}/*.jsonl", text_field="body"))


def test_empty_files_are_skipped_and_invalid_utf8_is_replaced_and_counted(tmp_path):
  (tmp_path / "empty.txt").write_text("")
  (tmp_path / "blank.txt").write_text("  \n")
  (tmp_path / "bad.txt").write_bytes(b"caf\xe9 au lait \xff\xfe ok")
  (tmp_path / "good.txt").write_text("plain text " * 10)
  source = sources.open_source(data_config(tmp_path, f"text:{tmp_path}/*.txt"))
  records = "".join(list(source.train) + list(source.eval))
  assert "caf\ufffd au lait \ufffd\ufffd ok" in records and "plain text" in records
  assert "2 empty skipped" in source.description
  assert "3 invalid UTF-8 sequences replaced in 1 files" in source.description


def test_only_empty_files_is_an_error(tmp_path):
  (tmp_path / "empty.txt").write_text("")
  with pytest.raises(ValueError, match="every document is empty"):
    sources.open_source(data_config(tmp_path, f"text:{tmp_path}/*.txt"))


@pytest.mark.parametrize("source, message", [
    ("text:/nonexistent/dir/*.txt", "matches no files"),
    ("jsonl:/nonexistent/*.jsonl", "matches no files"),
    ("ftp:somewhere", "unknown scheme"),
    ("builtin:wikipedia", "builtin:stdlib"),
    ("synthetic:markov:states=40", "states must be"),
    ("tfds:no_such_dataset_anywhere", "not a TFDS catalog dataset"),
])
def test_bad_sources_name_the_field(tmp_path, source, message):
  with pytest.raises((ValueError, FileNotFoundError), match=message) as info:
    sources.open_source(data_config(tmp_path, source))
  assert "data.source" in str(info.value)


class LmTestCatalog(tfds.core.GeneratorBasedBuilder):
  """A catalog dataset that needs no download: train and test splits of numbered lines."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {"text": tfds.features.Text(), "label": tfds.features.Scalar(np.int64)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(30), "test": self._generate_examples(5)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {"text": f"example {n}-{i}", "label": i}


def test_tfds_catalog_dataset_is_read_by_index(tmp_path):
  source = sources.open_source(data_config(tmp_path, "tfds:lm_test_catalog"))
  assert sorted(source.train) == sorted(f"example 30-{i}" for i in range(30))
  assert sorted(source.eval) == sorted(f"example 5-{i}" for i in range(5))  # the test split
  assert os.path.isdir(tmp_path / "tfds" / "lm_test_catalog" / "1.0.0")
  with pytest.raises(ValueError, match=r"data.text_field='body' is not a feature .*'label'"):
    sources.open_source(data_config(tmp_path, "tfds:lm_test_catalog", text_field="body"))


def test_unprepared_tfds_dataset_says_how_to_prepare_it(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"not prepared in .*tfds build lm_test_catalog "
                     r"--file_format=array_record"):
    sources.open_source(data_config(tmp_path, "tfds:lm_test_catalog", tfds_download=False))


def test_a_tfds_download_without_network_fails_in_seconds_saying_what_to_do(tmp_path,
                                                                           monkeypatch):
  """Offline, TFDS would retry for minutes. Every request here goes to a proxy at a closed
  local port, so the machine is offline for tiny_shakespeare whatever its network."""
  for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
    monkeypatch.setenv(name, "http://127.0.0.1:9")
  for name in ("NO_PROXY", "no_proxy"):
    monkeypatch.delenv(name, raising=False)
  start = time.monotonic()
  with pytest.raises(RuntimeError, match=r"could not be downloaded .*On a machine with network: "
                     r".*tfds build tiny_shakespeare --file_format=array_record"):
    sources.open_source(data_config(tmp_path, "tfds:tiny_shakespeare"))
  assert time.monotonic() - start < 20


class LmTestTrainOnly(tfds.core.GeneratorBasedBuilder):
  """A catalog dataset with a train split alone."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(40):
      yield i, {"text": f"doc {i}"}


def test_a_tfds_dataset_without_a_validation_split_holds_out_the_end_of_train(tmp_path):
  source = sources.open_source(data_config(tmp_path, "tfds:lm_test_train_only"))
  assert len(source.train) == 38 and len(source.eval) == 2  # 1 in data.eval_every_nth = 20
  assert sorted(list(source.train) + list(source.eval)) == sorted(f"doc {i}" for i in range(40))
