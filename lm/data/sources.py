"""Where documents come from, named by one string (`data.source`):

  tfds:<name>[/<config>][:<version>]   any dataset of the TFDS catalog (lm1b, c4, wikipedia,
                        tiny_shakespeare, ...), read by index from its ArrayRecord files in
                        `data.tfds_data_dir`; downloaded and prepared there on first use when
                        `data.tfds_download` is on (that step needs network and, for many
                        catalog builders, TensorFlow: the `tf` extra; reading never does)
  text:<glob>           local text files, one document per file
  jsonl:<glob>          local JSON-lines files, one document per line, in `data.text_field`;
                        for a stage that reads records (SFT), each line's whole JSON object
  builtin:tasks         the built-in instruction tasks (lm/data/tasks.py) as chat records,
                        with their own held-out split; builtin:tasks:add,sort picks tasks
  builtin:preferences   preference pairs over the built-in tasks' prompts with a known true
                        reward (lm/data/preferences.py), for stage="reward" / "dpo"; options:
                        builtin:preferences:noise=0.1,seed=0,tasks=add+sort,
                        kinds=correct+concise (of correct, concise, banned)
  builtin:demos         the built-in tasks' chat records with replies the way careless people
                        write them: the correct answer, padded or with a banned word of the
                        preference world (lm/data/preferences.demonstrations), for an SFT
                        start with habits to unlearn; builtin:demos:padded=0.5,banned=0.2,
                        seed=0,tasks=add+sort
  builtin:stdlib        ~1.7 MB of English prose shipped with Python itself: the pydoc topic
                        pages and every long docstring of the standard library. No network.
  synthetic:markov      a first-order Markov chain over a small alphabet whose entropy rate is
                        known exactly, so a test can check that training approaches the bound.
                        Options after a colon: synthetic:markov:states=16,alpha=0.3,seed=0.

A stage that reads text (pre-training) gets documents as str. A stage that names record
fields (`data.fields`, e.g. SFT's "messages") gets records as dicts: whole JSON objects from
jsonl:, the named features from tfds:; a record that lacks one of the fields is an error that
names the file, the line and the field.

Local sources (all but tfds:) are written once into a TFDS ArrayRecord dataset under
`data.cache_dir`, keyed by the source and, for files, their sizes and modification times;
later runs read it by index like any catalog dataset. Held-out documents: a catalog dataset's
own validation (or test) split; for local sources every `data.eval_every_nth` document.
"""

import ast
import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import pathlib
import sys
import sysconfig
from typing import Callable, Iterator, Sequence

from absl import logging
from etils import epath
import ml_collections
import numpy as np

FORMAT_VERSION = "2"           # bump when the preparation below changes what it writes
MAX_RECORD_CHARS = 1 << 20     # longer documents are stored as several records
TFDS_EVAL_SPLITS = ("validation", "test")


Check = Callable[[dict], None] | None  # record -> None, or ValueError naming the field


@dataclasses.dataclass(frozen=True)
class Source:
  name: str
  train: Sequence               # random access: len(), [i] -> document text, or a record dict
  eval: Sequence
  entropy_rate: float | None    # nats per symbol of the true source, where known
  description: str              # one line for the log: where it lives, how many documents


class TextRecords:
  """Documents of a random-access TFDS data source, as str (invalid UTF-8 replaced).

  A plain top-level class so grain can pickle it into worker processes."""

  def __init__(self, data_source, text_field: str):
    self._data_source, self._text_field = data_source, text_field

  def __len__(self) -> int:
    return len(self._data_source)

  def __getitem__(self, index: int) -> str:
    value = self._data_source[index][self._text_field]
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value

  def __iter__(self) -> Iterator[str]:
    return (self[i] for i in range(len(self)))


class JsonRecords(TextRecords):
  """Records stored as JSON text (a jsonl: source read by a stage with record fields)."""

  def __getitem__(self, index: int) -> dict:
    return json.loads(super().__getitem__(index))


class FeatureRecords:
  """Records of a TFDS catalog dataset: its features `fields`, bytes decoded to str."""

  def __init__(self, data_source, fields: tuple[str, ...]):
    self._data_source, self._fields = data_source, fields

  def __len__(self) -> int:
    return len(self._data_source)

  def __getitem__(self, index: int) -> dict:
    example = self._data_source[index]
    return {f: _decoded(example[f]) for f in self._fields}


def _decoded(value):
  """A TFDS feature value as plain Python: bytes as str, arrays as lists, dicts recursively."""
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  if isinstance(value, dict):
    return {k: _decoded(v) for k, v in value.items()}
  if isinstance(value, np.ndarray):
    return [_decoded(v) for v in value.tolist()] if value.dtype == object else value.tolist()
  if isinstance(value, list):
    return [_decoded(v) for v in value]
  return value


# --- The built-in corpora ---------------------------------------------------------------------

def stdlib_documents() -> list[str]:
  """pydoc topic pages and long docstrings of the standard library, in a fixed order."""
  from pydoc_data import topics  # pylint: disable=import-outside-toplevel
  docs = [topics.topics[name] for name in sorted(topics.topics)]
  stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
  skip = {"site-packages", "test", "tests", "idlelib", "lib2to3"}
  for path in sorted(stdlib.rglob("*.py")):
    if skip.intersection(path.relative_to(stdlib).parts):
      continue
    try:
      tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
      continue
    for node in ast.walk(tree):
      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(node)
        if doc and len(doc) >= 200:
          docs.append(doc)
  return docs


def markov_chain(states: int = 16, alpha: float = 0.3, seed: int = 0
                 ) -> tuple[np.ndarray, float]:
  """A random transition matrix [S, S] and its entropy rate in nats per symbol."""
  rng = np.random.default_rng(seed)
  transitions = rng.dirichlet(np.full(states, alpha), size=states)
  eigenvalues, eigenvectors = np.linalg.eig(transitions.T)
  stationary = np.real(eigenvectors[:, np.argmin(np.abs(eigenvalues - 1))])
  stationary /= stationary.sum()
  with np.errstate(divide="ignore", invalid="ignore"):
    row_entropy = -np.sum(np.where(transitions > 0, transitions * np.log(transitions), 0), axis=1)
  return transitions, float(stationary @ row_entropy)


def markov_text(transitions: np.ndarray, length: int, seed: int) -> str:
  """`length` symbols of the chain, written as the letters a, b, c, ..."""
  rng = np.random.default_rng(seed + 1)
  cumulative = np.cumsum(transitions, axis=1)
  uniforms = rng.random(length)
  symbols = np.empty(length, np.int64)
  state = 0
  for i in range(length):
    state = min(int(np.searchsorted(cumulative[state], uniforms[i], side="right")),
                len(transitions) - 1)
    symbols[i] = state
  return (symbols.astype(np.uint8) + ord("a")).tobytes().decode("ascii")


def _parse_options(text: str) -> dict[str, str]:
  return dict(item.split("=", 1) for item in text.split(",") if item)


def _markov(source: str, options: str) -> tuple[list[str], float]:
  opts = _parse_options(options)
  states, alpha = int(opts.get("states", 16)), float(opts.get("alpha", 0.3))
  seed, length = int(opts.get("seed", 0)), int(opts.get("length", 1_000_000))
  if not 2 <= states <= 26:
    raise ValueError(f"data.source={source!r}: states must be in [2, 26]")
  transitions, rate = markov_chain(states, alpha, seed)
  # Documents of 10k symbols: enough of them that every data shard and the eval split get some.
  text = markov_text(transitions, length, seed)
  return [text[i:i + 10_000] for i in range(0, length, 10_000)], rate


# --- Local files ------------------------------------------------------------------------------

@dataclasses.dataclass
class Counts:
  """Decisions taken on bad input, counted so that the log can say what happened."""
  files: int = 0
  documents: int = 0
  empty_skipped: int = 0
  files_with_invalid_utf8: int = 0
  replaced_bytes: int = 0


def _matching_files(source: str, pattern: str) -> list[str]:
  paths = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                 if os.path.isfile(p))
  if not paths:
    raise FileNotFoundError(f"data.source={source!r}: the glob {pattern!r} matches no files")
  return paths


def _decode(data: bytes, path: str, counts: Counts) -> str:
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError:
    text = data.decode("utf-8", errors="replace")
    replaced = text.count("\ufffd") - data.count("\ufffd".encode())
    counts.files_with_invalid_utf8 += 1
    counts.replaced_bytes += replaced
    logging.warning("%s: %d invalid UTF-8 sequences replaced by U+FFFD", path, replaced)
    return text


def _file_documents(source: str, scheme: str, pattern: str, text_field: str,
                    counts: Counts, fields: tuple[str, ...] = (), check: Check = None
                    ) -> Iterator[str]:
  """The documents of text: or jsonl: files; with `fields`, each JSON line whole (as JSON
  text), after checking that it has every field and passes the stage's `check`."""
  for path in _matching_files(source, pattern):
    counts.files += 1
    text = _decode(pathlib.Path(path).read_bytes(), path, counts)
    if scheme == "text":
      yield text
      continue
    for line_number, line in enumerate(text.splitlines(), 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_number}: not a JSON object ({e.msg})") from e
      if fields:
        missing = [f for f in fields if not isinstance(record, dict) or f not in record]
        if missing:
          raise ValueError(f"{path}:{line_number}: no field {missing[0]!r} (data.fields="
                           f"{','.join(fields)!r}; the record has "
                           f"{sorted(record) if isinstance(record, dict) else 'no fields'})")
        if check is not None:
          try:
            check(record)
          except ValueError as e:
            raise ValueError(f"{path}:{line_number}: {e}") from e
        yield json.dumps(record, ensure_ascii=False)
        continue
      if not isinstance(record, dict) or text_field not in record:
        raise ValueError(f"{path}:{line_number}: no field data.text_field={text_field!r} "
                         f"(fields: {sorted(record) if isinstance(record, dict) else '-'})")
      yield str(record[text_field])


def _records(document: str) -> Iterator[str]:
  """A document cut at line breaks into records of at most MAX_RECORD_CHARS, so that a single
  huge file still spreads over every data shard; packing later splits records into rows."""
  while len(document) > MAX_RECORD_CHARS:
    cut = document.rfind("\n", 0, MAX_RECORD_CHARS) + 1 or MAX_RECORD_CHARS
    yield document[:cut]
    document = document[cut:]
  yield document


def _local_documents(source: str, text_field: str, fields: tuple[str, ...] = (),
                     check: Check = None
                     ) -> tuple[Iterator[str], Counts, float | None]:
  scheme, _, rest = source.partition(":")
  counts, rate = Counts(), None
  if fields and scheme != "jsonl":
    raise ValueError(f"data.source={source!r} holds text documents, not records with the fields "
                     f"{','.join(fields)!r} that stage reads; use jsonl:, builtin:tasks or a "
                     "tfds: dataset with those features")
  if scheme == "builtin":
    if rest != "stdlib":
      raise ValueError(f"data.source={source!r}: the built-in sources are 'builtin:stdlib' "
                       "(text) and 'builtin:tasks' (chat records)")
    documents = iter(stdlib_documents())
  elif scheme == "synthetic":
    kind, _, options = rest.partition(":")
    if kind != "markov":
      raise ValueError(f"data.source={source!r}: the synthetic corpus is 'synthetic:markov'")
    docs, rate = _markov(source, options)
    documents = iter(docs)
  else:
    _matching_files(source, rest)  # fail now, not inside the TFDS builder
    documents = _file_documents(source, scheme, rest, text_field, counts, fields, check)

  def counted() -> Iterator[str]:
    for document in documents:
      if fields:  # a record stays whole
        counts.documents += 1
        yield document
        continue
      if not document.strip():
        counts.empty_skipped += 1
        continue
      for record in _records(document):
        counts.documents += 1
        yield record

  return counted(), counts, rate


def _split(records: list[str], every_nth: int, whole: bool = False
           ) -> tuple[list[str], list[str]]:
  """(train, eval): every n-th record held out; with fewer than 2n records, the last 1/n of
  each record instead (the last record, for `whole` records that cannot be cut), so that
  every source has a held-out split."""
  if whole and len(records) < 2 * every_nth:
    return records[:-1] or records, records[-1:]
  if len(records) >= 2 * every_nth:
    return ([r for i, r in enumerate(records) if i % every_nth != every_nth - 1],
            [r for i, r in enumerate(records) if i % every_nth == every_nth - 1])
  train, held_out = [], []
  for record in records:
    cut = len(record) - len(record) // every_nth
    if cut < len(record):
      held_out.append(record[cut:])
    train.append(record[:cut])
  return train, held_out


def files_signature(data: ml_collections.ConfigDict) -> str | None:
  """A hash of the paths, sizes and modification times of the files a text: or jsonl: source
  reads (None for other sources): it changes when a file does."""
  scheme, _, rest = data.source.partition(":")
  if scheme not in ("text", "jsonl"):
    return None
  stats = []
  for path in _matching_files(data.source, rest):
    stat = os.stat(path)
    stats.append(f"{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}")
  return hashlib.sha256("\n".join(stats).encode()).hexdigest()[:16]


def _cache_key(source: str, data: ml_collections.ConfigDict, fields: tuple[str, ...] = ()) -> str:
  parts = [FORMAT_VERSION, source, str(data.eval_every_nth), sys.version.split()[0]]
  if source.startswith("jsonl:"):
    parts.append(f"records:{','.join(fields)}" if fields else data.text_field)
  signature = files_signature(data)  # a changed file must not hit a stale cache
  if signature is not None:
    parts.append(signature)
  return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _exclusive(lock_path: str):
  """Processes of one host preparing the same source take turns; the later ones reuse."""
  import fcntl  # pylint: disable=import-outside-toplevel
  os.makedirs(os.path.dirname(lock_path), exist_ok=True)
  with open(lock_path, "w", encoding="utf-8") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def _local_builder_class():
  """The TFDS builder for local documents, defined on first use so that importing this
  module does not import TFDS."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  class LmLocalText(tfds.core.GeneratorBasedBuilder):
    """Documents from a local source: `text` per record, splits `train` and `validation`."""
    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, splits: dict[str, list[str]] | None = None, **kwargs):
      self._splits = splits
      super().__init__(**kwargs)

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {name: self._generate_examples(docs) for name, docs in self._splits.items()}

    def _generate_examples(self, docs):
      for i, doc in enumerate(docs):
        yield i, {"text": doc}

  return LmLocalText


_BUILDER = None


def _local_source(source: str, data: ml_collections.ConfigDict,
                  fields: tuple[str, ...] = (), check: Check = None) -> Source:
  global _BUILDER  # pylint: disable=global-statement
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  _BUILDER = _BUILDER or _local_builder_class()
  cache = os.path.abspath(os.path.expanduser(data.cache_dir))
  data_dir = os.path.join(cache, _cache_key(source, data, fields))
  summary_path = os.path.join(data_dir, "lm_source.json")
  with _exclusive(data_dir + ".lock"):
    if not os.path.exists(summary_path):
      records, counts, rate = _local_documents(source, data.text_field, fields, check)
      records = list(records)
      if not records:
        raise ValueError(f"data.source={source!r}: every document is empty "
                         f"({counts.empty_skipped} skipped)")
      train, held_out = _split(records, data.eval_every_nth, whole=bool(fields))
      tfds.disable_progress_bar()
      _BUILDER(splits={"train": train, "validation": held_out}, data_dir=data_dir,
               file_format="array_record").download_and_prepare()
      summary = {"source": source, **dataclasses.asdict(counts), "train": len(train),
                 "validation": len(held_out), "entropy_rate": rate}
      epath.Path(summary_path).write_text(json.dumps(summary, indent=2))
      logging.info("Prepared %s in %s: %s", source, data_dir, summary)
    summary = json.loads(pathlib.Path(summary_path).read_text(encoding="utf-8"))
  builder = _BUILDER(data_dir=data_dir, file_format="array_record")
  decisions = "".join([
      f", {summary['empty_skipped']} empty skipped" if summary["empty_skipped"] else "",
      f", {summary['replaced_bytes']} invalid UTF-8 sequences replaced in "
      f"{summary['files_with_invalid_utf8']} files" if summary["replaced_bytes"] else ""])
  records = JsonRecords if fields else TextRecords
  return Source(
      name=source,
      train=records(builder.as_data_source(split="train"), "text"),
      eval=records(builder.as_data_source(split="validation"), "text"),
      entropy_rate=summary["entropy_rate"],
      description=f"{source}: {summary['train']} train / {summary['validation']} held-out "
                  f"{'records' if fields else 'documents'}{decisions}, prepared in {data_dir}")


def _tasks_source(source: str, fields: tuple[str, ...]) -> Source:
  """builtin:tasks[:name,name]: the built-in instruction tasks' chat records, generated here."""
  from lm.data import tasks  # pylint: disable=import-outside-toplevel
  names = [n for n in source.split(":", 2)[2].split(",") if n] if source.count(":") > 1 else None
  try:
    train, held_out = tasks.records("train", tasks=names), tasks.records("eval", tasks=names)
  except ValueError as e:
    raise ValueError(f"data.source={source!r}: {e}") from e
  return _chat_source(source, fields, train, held_out)


def _chat_source(source: str, fields: tuple[str, ...], train: list[dict],
                 held_out: list[dict]) -> Source:
  """A built-in source's chat records, checked for the fields the stage reads."""
  if not fields:
    raise ValueError(f"data.source={source!r} holds chat records, which stage=pretrain does "
                     "not read; train on them with stage='sft'")
  missing = [f for f in fields if f not in train[0]]
  if missing:
    raise ValueError(f"data.source={source!r}: its records have no field {missing[0]!r} "
                     f"(data.fields={','.join(fields)!r}; they have {sorted(train[0])})")
  return Source(name=source, train=train, eval=held_out, entropy_rate=None,
                description=f"{source}: {len(train)} train / {len(held_out)} held-out records "
                            f"of the tasks {sorted({r['task'] for r in train})}")


def _demos_source(source: str, fields: tuple[str, ...]) -> Source:
  """builtin:demos[:padded=0.5,banned=0.2,seed=0,tasks=add+sort]: SFT records whose replies
  pad and say banned words (lm/data/preferences.demonstrations), generated here."""
  from lm.data import preferences  # pylint: disable=import-outside-toplevel
  options = _parse_options(source.split(":", 2)[2]) if source.count(":") > 1 else {}
  unknown = sorted(set(options) - {"padded", "banned", "seed", "tasks"})
  if unknown:
    raise ValueError(f"data.source={source!r}: unknown option {unknown[0]!r}; the options are "
                     "padded=<fraction>, banned=<fraction>, seed=<int>, tasks=<name>+<name>")
  try:
    kwargs = {"padded": float(options.get("padded", 0.5)),
              "banned": float(options.get("banned", 0.2)), "seed": int(options.get("seed", 0)),
              "task_names": options["tasks"].split("+") if "tasks" in options else None}
    train = preferences.demonstrations("train", **kwargs)
    held_out = preferences.demonstrations("eval", **kwargs)
  except ValueError as e:
    raise ValueError(f"data.source={source!r}: {e}") from e
  return _chat_source(source, fields, train, held_out)


def _preferences_source(source: str, fields: tuple[str, ...]) -> Source:
  """builtin:preferences[:noise=0.1,seed=0,tasks=add+sort,kinds=correct+concise]: the
  preference world's pairs (lm/data/preferences.py), generated here."""
  from lm.data import preferences  # pylint: disable=import-outside-toplevel
  options = _parse_options(source.split(":", 2)[2]) if source.count(":") > 1 else {}
  unknown = sorted(set(options) - {"noise", "seed", "tasks", "kinds"})
  if unknown:
    raise ValueError(f"data.source={source!r}: unknown option {unknown[0]!r}; the options are "
                     "noise=<swap probability>, seed=<int>, tasks=<name>+<name>, "
                     "kinds=<kind>+<kind>")
  try:
    noise, seed = float(options.get("noise", 0.0)), int(options.get("seed", 0))
    names = options["tasks"].split("+") if "tasks" in options else None
    kinds = options["kinds"].split("+") if "kinds" in options else preferences.KINDS
    train = preferences.records("train", seed=seed, noise=noise, task_names=names, kinds=kinds)
    held_out = preferences.records("eval", seed=seed, noise=0.0, task_names=names, kinds=kinds)
  except ValueError as e:
    raise ValueError(f"data.source={source!r}: {e}") from e
  missing = [f for f in fields if f not in train[0]]
  if missing or not fields:
    raise ValueError(f"data.source={source!r} holds preference pairs {sorted(train[0])}; "
                     f"stage with data.fields={','.join(fields)!r} cannot read them (train them "
                     "with stage='reward' or 'dpo')")
  return Source(name=source, train=train, eval=held_out, entropy_rate=None,
                description=f"{source}: {len(train)} train pairs (label noise {noise}) / "
                            f"{len(held_out)} held-out pairs (no noise)")


# --- The TFDS catalog -------------------------------------------------------------------------

@contextlib.contextmanager
def _few_download_retries(retries: int = 2):
  """TFDS retries a failed request 10 times with exponential backoff: minutes before a machine
  without network learns that it has none. Two retries ride out a blip and fail in seconds."""
  # pylint: disable-next=import-outside-toplevel
  from tensorflow_datasets.core.download import downloader
  saved = downloader.MAX_RETRIES
  downloader.MAX_RETRIES = retries
  try:
    yield
  finally:
    downloader.MAX_RETRIES = saved


def _tfds_source(source: str, data: ml_collections.ConfigDict,
                 fields: tuple[str, ...] = ()) -> Source:
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  spec = source.partition(":")[2]
  data_dir = os.path.expanduser(data.tfds_data_dir) if data.tfds_data_dir else None
  try:
    builder = tfds.builder(spec, data_dir=data_dir, file_format="array_record")
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"data.source={source!r}: {spec!r} is not a TFDS catalog dataset "
                     f"({type(e).__name__}: {e})") from e
  where = builder.data_dir
  how_to = (f"On a machine with network: pip install -e '.[tf]' && tfds build {spec} "
            f"--file_format=array_record --data_dir={data_dir or '~/tensorflow_datasets'} "
            "(then copy that directory here and set data.tfds_data_dir)")
  if not builder.is_prepared():
    if not data.tfds_download:
      raise FileNotFoundError(f"data.source={source!r} is not prepared in {where} and "
                              f"data.tfds_download is off. {how_to}")
    try:
      with _few_download_retries():
        builder.download_and_prepare()
    except Exception as e:  # pylint: disable=broad-except
      raise RuntimeError(f"data.source={source!r} is not prepared in {where} and could not be "
                         f"downloaded and prepared ({type(e).__name__}: {str(e)[:300]}). "
                         f"{how_to}") from e
  splits = builder.info.splits
  if "train" not in splits:
    raise ValueError(f"data.source={source!r} has no train split (it has {sorted(splits)})")
  features = builder.info.features
  for field, name in ([(f, "data.fields") for f in fields] if fields
                      else [(data.text_field, "data.text_field")]):
    if field not in features:
      raise ValueError(f"{name}={field!r} is not a feature of {source!r}; it has "
                       f"{sorted(features.keys())}")
  eval_split = next((s for s in TFDS_EVAL_SPLITS if s in splits), None)
  train_split = "train"
  if eval_split is None:  # hold out the last documents of train
    held_out = max(splits["train"].num_examples // data.eval_every_nth, 1)
    train_split, eval_split = f"train[:-{held_out}]", f"train[-{held_out}:]"
  try:
    train, held = (builder.as_data_source(split=s) for s in (train_split, eval_split))
  except NotImplementedError as e:
    raise ValueError(f"data.source={source!r} is prepared in {where} in a format without "
                     f"random access; prepare it again with --file_format=array_record "
                     f"into another data.tfds_data_dir") from e
  if fields:
    train_records, held_records = FeatureRecords(train, fields), FeatureRecords(held, fields)
  else:
    train_records, held_records = (TextRecords(train, data.text_field),
                                   TextRecords(held, data.text_field))
  return Source(name=source, train=train_records, eval=held_records, entropy_rate=None,
                description=f"{source}: {len(train)} train documents ({train_split}), "
                            f"{len(held)} held-out ({eval_split}), from {where}")


def open_source(data: ml_collections.ConfigDict, fields: tuple[str, ...] = (),
                check: Check = None) -> Source:
  """The train and held-out documents of `data.source`, prepared on first use; with
  `fields`, records (dicts) that have each of them. `check(record)` (a stage's) raises
  ValueError naming the field of a malformed jsonl: record; the error adds file and line."""
  source = data.source
  scheme = source.partition(":")[0]
  if scheme == "tfds":
    return _tfds_source(source, data, fields)
  if source == "builtin:tasks" or source.startswith("builtin:tasks:"):
    return _tasks_source(source, fields)
  if source == "builtin:preferences" or source.startswith("builtin:preferences:"):
    return _preferences_source(source, fields)
  if source == "builtin:demos" or source.startswith("builtin:demos:"):
    return _demos_source(source, fields)
  if scheme in ("builtin", "synthetic", "text", "jsonl"):
    return _local_source(source, data, fields, check)
  raise ValueError(f"data.source={source!r} has an unknown scheme {scheme!r}; use "
                   "tfds:<name>, text:<glob>, jsonl:<glob>, builtin:stdlib, builtin:tasks "
                   "or synthetic:markov")
