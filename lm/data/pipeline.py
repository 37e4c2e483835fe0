"""The input pipeline, on grain: shuffle, tokenize, pack, batch, shard.

The global batch is cut into `data.shards` input streams of equal numbers of rows (by default
one per process). Every epoch is one global permutation of the documents (by `seed`, a new one
each epoch); stream i reads documents i, i + S, i + 2S, ... of that order, tokenizes them as
`<bos> text <eos>`, packs them back to back into rows of `seq_len` tokens (a document longer
than a row continues in the next one; nothing is dropped or padded), shuffles the packed rows
within windows of `data.shuffle_rows` (so that the rows of one long document spread over many
batches) and batches them. A process reads only the streams of its own rows, so per-process
shards are disjoint and together make the global batch, and the batches depend on
`data.shards`, never on how many processes read them: a run resumes exactly on another
topology with the same `data.shards`.

Rows carry `segment_ids` (1, 2, ... per document in the row) and `positions` (restarting at 0
at every document start and at every row start), so attention and RoPE never cross documents.
The state of every stream (a few integers per stream, as JSON) goes into each checkpoint.
"""

import dataclasses
from typing import Any, Sequence

from absl import flags
import grain
import grain.experimental as grain_experimental
import ml_collections
import numpy as np

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Tokenize:
  """text -> next-token pairs of one document. A top-level class: worker processes pickle it."""
  tokenizer: Any

  def __call__(self, text: str) -> dict[str, np.ndarray] | None:
    tok = self.tokenizer
    ids = tok.encode(text, add_bos=tok.bos_id is not None, add_eos=True).astype(np.int32)
    if len(ids) < 2:
      return None  # nothing to predict
    return {"inputs": ids[:-1], "targets": ids[1:]}


def finish_row(row: dict[str, np.ndarray]) -> Batch:
  """A packed row as the model reads it: positions restart at each document and row start."""
  segment_ids = row["inputs_segment_ids"]                                  # [T], 0 = padding
  index = np.arange(len(segment_ids))
  starts = np.concatenate([[True], segment_ids[1:] != segment_ids[:-1]])
  positions = index - np.maximum.accumulate(np.where(starts, index, 0))
  return {"inputs": row["inputs"], "targets": row["targets"],
          "segment_ids": segment_ids.astype(np.int32), "positions": positions.astype(np.int32),
          "loss_mask": (segment_ids > 0).astype(np.float32)}


def example_batch(batch_size: int, seq_len: int) -> Batch:
  """Zeros with the keys, shapes and dtypes of a training batch (for compiling ahead)."""
  row = finish_row({"inputs": np.zeros(seq_len, np.int32), "targets": np.zeros(seq_len, np.int32),
                    "inputs_segment_ids": np.ones(seq_len, np.int32)})
  return {key: np.stack([value] * batch_size) for key, value in row.items()}


def stream(documents: Sequence[str], tokenizer, *, shard: int, num_shards: int, rows: int,
           seq_len: int, seed: int, shuffle: bool, data: ml_collections.ConfigDict
           ) -> grain.IterDataset:
  """Input stream `shard` of `num_shards`: batches of `rows` packed rows, forever."""
  docs = grain.MapDataset.source(documents)
  if shuffle:
    docs = docs.shuffle(seed=seed)
  docs = docs.repeat(None)[shard::num_shards]  # a new permutation each epoch when shuffled
  examples = docs.map(Tokenize(tokenizer)).to_iter_dataset(
      grain.ReadOptions(num_threads=data.num_threads, prefetch_buffer_size=64 * rows))
  if data.num_workers:  # tokenize in worker processes; pack here, in order
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; a notebook never parsed
      flags.FLAGS.mark_as_parsed()
    examples = examples.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.num_workers))
  packed = grain_experimental.ConcatThenSplitIterDataset(
      examples, length_struct={"inputs": seq_len, "targets": seq_len})
  packed_rows = packed.map(finish_row)
  if shuffle and data.shuffle_rows:  # else a long document fills whole batches with its rows
    packed_rows = grain_experimental.WindowShuffleIterDataset(
        packed_rows, window_size=data.shuffle_rows, seed=seed + shard)
  batches = packed_rows.batch(rows, drop_remainder=True)
  if data.prefetch:
    batches = grain_experimental.ThreadPrefetchIterDataset(batches,
                                                           prefetch_buffer_size=data.prefetch)
  return batches


def process_shards(rows: slice, batch_size: int, shards: int) -> tuple[range, int]:
  """The streams that make up this process's `rows` of the global batch, and their count."""
  local = rows.stop - rows.start
  num_shards = shards or batch_size // local
  per_shard = batch_size // num_shards
  if rows.start % per_shard or local % per_shard:
    raise ValueError(f"data.shards={shards} cuts the global batch of {batch_size} rows into "
                     f"streams of {per_shard}, which do not align with this process's rows "
                     f"[{rows.start}:{rows.stop}]; use a multiple of the number of processes")
  return range(rows.start // per_shard, rows.stop // per_shard), num_shards


def _from_json(state):
  """A grain state as it was before a JSON round trip: the packer marks "no remainder" with
  the tuple (-1, -1) and compares against it, so the lists JSON gives back become tuples."""
  if not isinstance(state, dict):
    return state
  return {key: ({k: tuple(v) for k, v in value.items()} if key == "remainder_slices"
                else _from_json(value)) for key, value in state.items()}


class Batches:
  """This process's rows of each global batch, from its streams; resumable.

  `get_state()` / `set_state()` hold one grain iterator state per stream, keyed by stream
  index, plus a fingerprint of what makes the order (source, tokenizer, shapes, seed, workers):
  a state saved under another fingerprint does not apply."""

  def __init__(self, datasets: dict[int, grain.IterDataset], fingerprint: dict):
    self.fingerprint = fingerprint
    self._iterators = {shard: iter(ds) for shard, ds in datasets.items()}

  def __iter__(self):
    return self

  def __next__(self) -> Batch:
    parts = [next(it) for it in self._iterators.values()]
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

  @property
  def shards(self) -> list[int]:
    return list(self._iterators)

  def get_state(self) -> dict:
    return {"fingerprint": self.fingerprint,
            "streams": {str(s): it.get_state() for s, it in self._iterators.items()}}

  def set_state(self, state: dict) -> None:
    for shard, it in self._iterators.items():
      it.set_state(_from_json(state["streams"][str(shard)]))

  def close(self) -> None:
    """Stops the prefetch threads and worker processes."""
    for it in self._iterators.values():
      it.close()


def _process_streams(documents: Sequence[str], tokenizer, config: ml_collections.ConfigDict,
                     rows: slice, seed: int, shuffle: bool, data: ml_collections.ConfigDict
                     ) -> tuple[dict[int, grain.IterDataset], int]:
  """({stream index: stream} for this process's `rows`, the number of streams in all)."""
  t = config.train
  shards, num_shards = process_shards(rows, t.batch_size, config.data.shards)
  return {s: stream(documents, tokenizer, shard=s, num_shards=num_shards,
                    rows=t.batch_size // num_shards, seq_len=t.seq_len, seed=seed,
                    shuffle=shuffle, data=data) for s in shards}, num_shards


def train_batches(documents: Sequence[str], tokenizer, config: ml_collections.ConfigDict,
                  rows: slice, seed: int | None = None) -> Batches:
  """The training batches of this process (its `rows` of every global batch), shuffled by
  `seed` (default: config.seed)."""
  seed = config.seed if seed is None else seed
  datasets, num_shards = _process_streams(documents, tokenizer, config, rows, seed,
                                          shuffle=True, data=config.data)
  d, t = config.data, config.train
  return Batches(datasets, {"source": d.source, "tokenizer": tokenizer.name,
                            "seq_len": t.seq_len, "batch_size": t.batch_size,
                            "shards": num_shards, "seed": seed, "num_workers": d.num_workers,
                            "shuffle_rows": d.shuffle_rows})


def why_not_resumable(batches: Batches, saved: dict | None) -> str | None:
  """Why a saved data position cannot continue `batches`; None when it can."""
  if saved is None:
    return "it holds no position for this run's input streams"
  changed = [f"{key} {saved['fingerprint'].get(key)!r} -> {value!r}"
             for key, value in batches.fingerprint.items()
             if saved["fingerprint"].get(key) != value]
  return "changed: " + ", ".join(changed) if changed else None


def eval_batches(documents: Sequence[str], tokenizer, config: ml_collections.ConfigDict,
                 rows: slice) -> list[Batch]:
  """`train.eval_batches` batches of held-out documents in their stored order (cycled when the
  split is smaller): the same at every evaluation, cut into streams like training batches."""
  data = ml_collections.ConfigDict({**config.data.to_dict(), "num_workers": 0, "prefetch": 0})
  datasets, _ = _process_streams(documents, tokenizer, config, rows, seed=0, shuffle=False,
                                 data=data)
  batches = Batches(datasets, {})
  return [next(batches) for _ in range(config.train.eval_batches)]


# --- Examples that must not be split: conversations (SFT) --------------------------------------

def finish_packed_row(row: dict[str, np.ndarray]) -> Batch:
  """A row from first-fit packing as the model reads it; the loss mask is the examples' own."""
  return {"inputs": row["inputs"], "targets": row["targets"],
          "segment_ids": row["inputs_segment_ids"].astype(np.int32),
          "positions": row["inputs_positions"].astype(np.int32),
          "loss_mask": row["loss_mask"].astype(np.float32)}


def example_stream(records: Sequence, to_example: Any, *, shard: int, num_shards: int, rows: int,
                   seq_len: int, seed: int, shuffle: bool, data: ml_collections.ConfigDict
                   ) -> grain.IterDataset:
  """Input stream `shard` of `num_shards` over examples that stay whole: `to_example(record)`
  gives {"inputs", "targets", "loss_mask"} of at most `seq_len` tokens (or None to skip), and
  rows hold whole examples, first-fit packed (`data.pack`) or one per row, padded. Padding has
  segment id 0 and loss mask 0. Otherwise as `stream`: shuffled per epoch, read i, i + S, ..."""
  examples = grain.MapDataset.source(records)
  if shuffle:
    examples = examples.shuffle(seed=seed)
  examples = examples.repeat(None)[shard::num_shards].map(to_example).to_iter_dataset(
      grain.ReadOptions(num_threads=data.num_threads, prefetch_buffer_size=64 * rows))
  if data.num_workers:
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    examples = examples.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.num_workers))
  packed = grain_experimental.FirstFitPackIterDataset(
      examples, length_struct={"inputs": seq_len, "targets": seq_len, "loss_mask": seq_len},
      num_packing_bins=rows if data.pack else 1, seed=seed + shard, shuffle_bins=shuffle,
      max_sequences_per_bin=None if data.pack else 1)
  packed_rows = packed.map(finish_packed_row)
  if shuffle and data.shuffle_rows:
    packed_rows = grain_experimental.WindowShuffleIterDataset(
        packed_rows, window_size=data.shuffle_rows, seed=seed + shard)
  batches = packed_rows.batch(rows, drop_remainder=True)
  if data.prefetch:
    batches = grain_experimental.ThreadPrefetchIterDataset(batches,
                                                           prefetch_buffer_size=data.prefetch)
  return batches


def example_batches(records: Sequence, to_example: Any, config: ml_collections.ConfigDict,
                    rows: slice, seed: int, shuffle: bool = True) -> Batches:
  """This process's rows of every batch of whole examples (see `example_stream`); resumable
  like `train_batches`. Unshuffled (held-out batches), in the records' stored order."""
  d, t = config.data, config.train
  if not shuffle:
    d = ml_collections.ConfigDict({**d.to_dict(), "num_workers": 0, "prefetch": 0})
  shards, num_shards = process_shards(rows, t.batch_size, config.data.shards)
  datasets = {s: example_stream(records, to_example, shard=s, num_shards=num_shards,
                                rows=t.batch_size // num_shards, seq_len=t.seq_len, seed=seed,
                                shuffle=shuffle, data=d) for s in shards}
  return Batches(datasets, {"source": d.source, "tokenizer": getattr(to_example, "name", ""),
                            "seq_len": t.seq_len, "batch_size": t.batch_size,
                            "shards": num_shards, "seed": seed, "num_workers": d.num_workers,
                            "shuffle_rows": d.shuffle_rows, "pack": d.pack,
                            "truncate": d.truncate})


# --- Examples of a fixed shape, one per row: preference pairs -----------------------------------

def padded_stream(records: Sequence, to_row: Any, *, shard: int, num_shards: int, rows: int,
                  seed: int, shuffle: bool, data: ml_collections.ConfigDict
                  ) -> grain.IterDataset:
  """Input stream `shard` of `num_shards`: `to_row(record)` gives one row of fixed-shape arrays
  (or None to skip the record); batches of `rows` of them. Shuffled per epoch and read i,
  i + S, ... like `stream`; nothing is packed."""
  examples = grain.MapDataset.source(records)
  if shuffle:
    examples = examples.shuffle(seed=seed)
  examples = examples.repeat(None)[shard::num_shards].map(to_row).to_iter_dataset(
      grain.ReadOptions(num_threads=data.num_threads, prefetch_buffer_size=64 * rows))
  if data.num_workers:
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    examples = examples.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.num_workers))
  batches = examples.batch(rows, drop_remainder=True)
  if data.prefetch:
    batches = grain_experimental.ThreadPrefetchIterDataset(batches,
                                                           prefetch_buffer_size=data.prefetch)
  return batches


def padded_batches(records: Sequence, to_row: Any, config: ml_collections.ConfigDict,
                   rows: slice, seed: int, shuffle: bool = True) -> Batches:
  """This process's rows of every batch of fixed-shape rows (see `padded_stream`); resumable
  like `train_batches`. Unshuffled (held-out batches), in the records' stored order."""
  d, t = config.data, config.train
  if not shuffle:
    d = ml_collections.ConfigDict({**d.to_dict(), "num_workers": 0, "prefetch": 0})
  shards, num_shards = process_shards(rows, t.batch_size, config.data.shards)
  datasets = {s: padded_stream(records, to_row, shard=s, num_shards=num_shards,
                               rows=t.batch_size // num_shards, seed=seed, shuffle=shuffle,
                               data=d) for s in shards}
  return Batches(datasets, {"source": d.source, "tokenizer": getattr(to_row, "name", ""),
                            "seq_len": t.seq_len, "batch_size": t.batch_size,
                            "shards": num_shards, "seed": seed, "num_workers": d.num_workers,
                            "truncate": d.truncate})
