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
The state of every stream (a few integers per stream, as JSON) goes into each checkpoint,
with the seed the streams were shuffled by (config.seed, or config.seed + step after a change
of data order), so that a later resume rebuilds the same streams.

Evaluation reads the first `data.eval_documents` held-out documents in their stored order,
packed the same way into rows that do not depend on `data.shards` or on the processes; the
rows are cut into global batches (the last padded with loss_mask 0) and every process takes
its rows of each. So every topology scores the same tokens, each once.
"""

import dataclasses
import math
from typing import Any, Callable, Sequence

from absl import flags
from absl import logging
import grain
import grain.experimental as grain_experimental
import ml_collections
import numpy as np

from lm.data import sources

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


def _mapped(records: Sequence, convert: Any, *, shard: int, num_shards: int, rows: int,
            seed: int, data: ml_collections.ConfigDict) -> grain.IterDataset:
  """Stream `shard` of `num_shards` over `records`: a new permutation each epoch, read i,
  i + S, ..., each record through `convert` (in `data.num_workers` worker processes when set;
  what follows runs here, in order)."""
  items = grain.MapDataset.source(records).shuffle(seed=seed)
  items = items.repeat(None)[shard::num_shards].map(convert).to_iter_dataset(
      grain.ReadOptions(num_threads=data.num_threads, prefetch_buffer_size=64 * rows))
  if data.num_workers:
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; a notebook never parsed
      flags.FLAGS.mark_as_parsed()
    items = items.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.num_workers))
  return items


def _batched(rows_of_a_stream: grain.IterDataset, rows: int,
             data: ml_collections.ConfigDict) -> grain.IterDataset:
  batches = rows_of_a_stream.batch(rows, drop_remainder=True)
  if data.prefetch:
    batches = grain_experimental.ThreadPrefetchIterDataset(batches,
                                                           prefetch_buffer_size=data.prefetch)
  return batches


def _fingerprint(config: ml_collections.ConfigDict, tokenizer_name: str, num_shards: int,
                 **more) -> dict:
  """What the order of a run's batches depends on: a resume with another value reshuffles."""
  d, t = config.data, config.train
  return {"source": d.source, "files": sources.files_signature(d),
          "eval_every_nth": d.eval_every_nth, "tokenizer": tokenizer_name,
          "seq_len": t.seq_len, "batch_size": t.batch_size, "shards": num_shards,
          "seed": config.seed, "num_workers": d.num_workers, **more}


def stream(documents: Sequence[str], tokenizer, *, shard: int, num_shards: int, rows: int,
           seq_len: int, seed: int, data: ml_collections.ConfigDict) -> grain.IterDataset:
  """Input stream `shard` of `num_shards`: batches of `rows` packed rows, forever."""
  examples = _mapped(documents, Tokenize(tokenizer), shard=shard, num_shards=num_shards,
                     rows=rows, seed=seed, data=data)  # tokenized in workers, packed in order
  packed = grain_experimental.ConcatThenSplitIterDataset(
      examples, length_struct={"inputs": seq_len, "targets": seq_len})
  packed_rows = packed.map(finish_row)
  if data.shuffle_rows:  # else a long document fills whole batches with its rows
    packed_rows = grain_experimental.WindowShuffleIterDataset(
        packed_rows, window_size=data.shuffle_rows, seed=seed + shard)
  return _batched(packed_rows, rows, data)


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
  index, plus a fingerprint of what makes the order (documents, tokenizer, shapes, config.seed,
  workers): a state saved under another fingerprint does not apply. `seed` is the seed the
  streams are shuffled by, saved beside the fingerprint: it differs from config.seed once the
  data order has changed during a run (see `resume`)."""

  def __init__(self, datasets: dict[int, grain.IterDataset], fingerprint: dict, seed: int):
    self.fingerprint, self.seed = fingerprint, seed
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
    return {"fingerprint": self.fingerprint, "seed": self.seed,
            "streams": {str(s): it.get_state() for s, it in self._iterators.items()}}

  def set_state(self, state: dict) -> None:
    for shard, it in self._iterators.items():
      it.set_state(_from_json(state["streams"][str(shard)]))

  def close(self) -> None:
    """Stops the prefetch threads and worker processes."""
    for it in self._iterators.values():
      it.close()


def train_batches(documents: Sequence[str], tokenizer, config: ml_collections.ConfigDict,
                  rows: slice, seed: int | None = None) -> Batches:
  """The training batches of this process (its `rows` of every global batch), shuffled by
  `seed` (default: config.seed)."""
  seed = config.seed if seed is None else seed
  d, t = config.data, config.train
  shards, num_shards = process_shards(rows, t.batch_size, d.shards)
  datasets = {s: stream(documents, tokenizer, shard=s, num_shards=num_shards,
                        rows=t.batch_size // num_shards, seq_len=t.seq_len, seed=seed, data=d)
              for s in shards}
  return Batches(datasets, _fingerprint(config, tokenizer.name, num_shards,
                                        text_field=d.text_field, shuffle_rows=d.shuffle_rows),
                 seed)


def why_not_resumable(batches: Batches, saved: dict | None) -> str | None:
  """Why a saved data position cannot continue `batches`; None when it can."""
  if saved is None:
    return "it holds no position for this run's input streams"
  changed = [f"{key} {saved['fingerprint'].get(key)!r} -> {value!r}"
             for key, value in batches.fingerprint.items()
             if saved["fingerprint"].get(key) != value]
  return "changed: " + ", ".join(changed) if changed else None


def resume(batches: Batches, saved: dict | None, step: int, config: ml_collections.ConfigDict,
           reopen: Callable[[int], Batches]) -> Batches:
  """The training batches that continue a checkpoint at `step` whose data state is `saved`;
  `reopen(seed)` builds the same batches shuffled by another seed.

  When `saved` applies, the streams continue from its positions, rebuilt with its seed if that
  is not `batches`' (the order was changed earlier in the run); else they restart with a new
  shuffle, seed config.seed + step, which the next checkpoints carry. `batches` is closed when
  it is not the result."""
  reason = why_not_resumable(batches, saved)
  if reason is None:
    seed = saved["seed"] if saved.get("seed") is not None else saved["fingerprint"]["seed"]
  else:
    seed = config.seed + step
    logging.warning("The data position in the checkpoint at step %d does not apply (%s); the "
                    "input streams restart with a new shuffle (seed %d + step)", step, reason,
                    config.seed)
  if seed != batches.seed:
    batches.close()
    batches = reopen(seed)
  if reason is None:
    batches.set_state(saved)
  return batches


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """What every evaluation scores: this process's rows of each global batch, and totals over
  all processes."""
  batches: list[Batch]
  documents: int    # held-out documents scored, whole
  tokens: int       # targets scored (loss_mask 1)
  bytes: int        # their UTF-8 bytes plus one per document end: the bits-per-byte denominator


def eval_set(documents: Sequence[str], tokenizer, config: ml_collections.ConfigDict,
             rows: slice) -> EvalSet:
  """The first `data.eval_documents` held-out documents (0: all), in their stored order,
  packed into rows as for training; the rows depend on the documents, the tokenizer and
  `train.seq_len` only, never on `data.shards` or the processes.

  Bits per byte counts the text itself: a document end predicts the boundary between two
  documents, counted as one byte, so a tokenizer's <eos> is paid for like a byte tokenizer's
  newline would be; tokens that stand for no text of the document (a leading-space marker)
  count nothing."""
  t = config.train
  count = config.data.eval_documents or len(documents)
  tokenize = Tokenize(tokenizer)
  examples, num_bytes = [], 0
  for i in range(min(count, len(documents))):
    text = documents[i]
    example = tokenize(text)
    if example is not None:
      examples.append(example)
      num_bytes += len(text.encode("utf-8")) + 1
  packed = grain_experimental.ConcatThenSplitIterDataset(
      grain.MapDataset.source(examples).to_iter_dataset(),
      length_struct={"inputs": t.seq_len, "targets": t.seq_len})
  all_rows = [finish_row(row) for row in packed]
  padding = finish_row({"inputs": np.zeros(t.seq_len, np.int32),
                        "targets": np.zeros(t.seq_len, np.int32),
                        "inputs_segment_ids": np.zeros(t.seq_len, np.int32)})
  num_batches = max(math.ceil(len(all_rows) / t.batch_size), 1)
  all_rows += [padding] * (num_batches * t.batch_size - len(all_rows))
  batches = []
  for b in range(num_batches):
    mine = all_rows[b * t.batch_size + rows.start:b * t.batch_size + rows.stop]
    batches.append({key: np.stack([row[key] for row in mine]) for key in padding})
  return EvalSet(batches=batches, documents=len(examples),
                 tokens=sum(len(e["targets"]) for e in examples), bytes=num_bytes)


# --- Examples that must not be split: conversations (SFT) --------------------------------------

_EXAMPLE_LENGTHS = ("inputs", "targets", "loss_mask")


def finish_packed_row(row: dict[str, np.ndarray]) -> Batch:
  """A row from first-fit packing as the model reads it; the loss mask is the examples' own."""
  return {"inputs": row["inputs"], "targets": row["targets"],
          "segment_ids": row["inputs_segment_ids"].astype(np.int32),
          "positions": row["inputs_positions"].astype(np.int32),
          "loss_mask": row["loss_mask"].astype(np.float32)}


def _first_fit(examples: grain.IterDataset, seq_len: int, bins: int, seed: int, shuffle: bool,
               pack: bool) -> grain.IterDataset:
  """Rows of whole examples: first-fit packed into `bins` rows at a time, or one per row."""
  return grain_experimental.FirstFitPackIterDataset(
      examples, length_struct={key: seq_len for key in _EXAMPLE_LENGTHS},
      num_packing_bins=bins if pack else 1, seed=seed, shuffle_bins=shuffle,
      max_sequences_per_bin=None if pack else 1).map(finish_packed_row)


def example_stream(records: Sequence, to_example: Any, *, shard: int, num_shards: int, rows: int,
                   seq_len: int, seed: int, data: ml_collections.ConfigDict) -> grain.IterDataset:
  """Input stream `shard` of `num_shards` over examples that stay whole: `to_example(record)`
  gives {"inputs", "targets", "loss_mask"} of at most `seq_len` tokens (or None to skip), and
  rows hold whole examples, first-fit packed (`data.pack`) or one per row, padded. Padding has
  segment id 0 and loss mask 0. Otherwise as `stream`: shuffled per epoch, read i, i + S, ..."""
  examples = _mapped(records, to_example, shard=shard, num_shards=num_shards, rows=rows,
                     seed=seed, data=data)
  packed_rows = _first_fit(examples, seq_len, rows, seed + shard, True, data.pack)
  if data.shuffle_rows:
    packed_rows = grain_experimental.WindowShuffleIterDataset(
        packed_rows, window_size=data.shuffle_rows, seed=seed + shard)
  return _batched(packed_rows, rows, data)


def example_batches(records: Sequence, to_example: Any, config: ml_collections.ConfigDict,
                    rows: slice, seed: int | None = None) -> Batches:
  """This process's rows of every training batch of whole examples (`example_stream`),
  shuffled by `seed` (default: config.seed); resumable like `train_batches`."""
  seed = config.seed if seed is None else seed
  d, t = config.data, config.train
  shards, num_shards = process_shards(rows, t.batch_size, d.shards)
  datasets = {s: example_stream(records, to_example, shard=s, num_shards=num_shards,
                                rows=t.batch_size // num_shards, seq_len=t.seq_len, seed=seed,
                                data=d) for s in shards}
  return Batches(datasets, _fingerprint(config, getattr(to_example, "name", ""), num_shards,
                                        fields=d.fields, shuffle_rows=d.shuffle_rows,
                                        pack=d.pack, truncate=d.truncate), seed)


def example_eval_set(records: Sequence, to_example: Any, config: ml_collections.ConfigDict,
                     rows: slice) -> EvalSet:
  """The first `data.eval_documents` held-out records (0: all), in their stored order, each
  once, in rows as for training (packed or padded), padded to whole batches with empty rows;
  like `eval_set`, independent of `data.shards` and the processes. `bytes` is 0: what a
  record's tokens stand for is the stage's to count."""
  t = config.train
  count = min(config.data.eval_documents or len(records), len(records))
  examples = [e for e in (to_example(records[i]) for i in range(count)) if e is not None]
  all_rows = list(_first_fit(grain.MapDataset.source(examples).to_iter_dataset(), t.seq_len,
                             t.batch_size, 0, False, config.data.pack))
  padding = {key: np.zeros_like(value) for key, value in example_batch(1, t.seq_len).items()}
  padding = {key: value[0] for key, value in padding.items()}
  num_batches = max(math.ceil(len(all_rows) / t.batch_size), 1)
  all_rows += [padding] * (num_batches * t.batch_size - len(all_rows))
  batches = []
  for b in range(num_batches):
    mine = all_rows[b * t.batch_size + rows.start:b * t.batch_size + rows.stop]
    batches.append({key: np.stack([row[key] for row in mine]) for key in padding})
  return EvalSet(batches=batches, documents=len(examples),
                 tokens=int(sum(e["loss_mask"].sum() for e in examples)), bytes=0)


# --- Examples of a fixed shape, one per row: preference pairs -----------------------------------

def padded_stream(records: Sequence, to_row: Any, *, shard: int, num_shards: int, rows: int,
                  seed: int, data: ml_collections.ConfigDict) -> grain.IterDataset:
  """Input stream `shard` of `num_shards`: `to_row(record)` gives one row of fixed-shape arrays
  (or None to skip the record); batches of `rows` of them. Shuffled per epoch and read i,
  i + S, ... like `stream`; nothing is packed."""
  return _batched(_mapped(records, to_row, shard=shard, num_shards=num_shards, rows=rows,
                          seed=seed, data=data), rows, data)


def padded_batches(records: Sequence, to_row: Any, config: ml_collections.ConfigDict,
                   rows: slice, seed: int | None = None) -> Batches:
  """This process's rows of every training batch of fixed-shape rows (`padded_stream`),
  shuffled by `seed` (default: config.seed); resumable like `train_batches`."""
  seed = config.seed if seed is None else seed
  d, t = config.data, config.train
  shards, num_shards = process_shards(rows, t.batch_size, d.shards)
  datasets = {s: padded_stream(records, to_row, shard=s, num_shards=num_shards,
                               rows=t.batch_size // num_shards, seed=seed, data=d)
              for s in shards}
  return Batches(datasets, {"source": d.source, "files": sources.files_signature(d),
                            "fields": d.fields, "eval_every_nth": d.eval_every_nth,
                            "tokenizer": getattr(to_row, "name", ""), "seq_len": t.seq_len,
                            "batch_size": t.batch_size, "shards": num_shards,
                            "seed": config.seed, "num_workers": d.num_workers,
                            "truncate": d.truncate}, seed)


def padded_eval_set(records: Sequence, to_row: Any, config: ml_collections.ConfigDict,
                    rows: slice, padding: Batch) -> EvalSet:
  """The first `data.eval_documents` held-out records (0: all), in their stored order, one row
  each, the last batch filled with `padding` rows (which the stage must weigh 0); like
  `eval_set`, independent of `data.shards` and the processes."""
  t = config.train
  count = min(config.data.eval_documents or len(records), len(records))
  all_rows = [r for r in (to_row(records[i]) for i in range(count)) if r is not None]
  num_examples = len(all_rows)
  num_batches = max(math.ceil(num_examples / t.batch_size), 1)
  all_rows += [padding] * (num_batches * t.batch_size - num_examples)
  batches = []
  for b in range(num_batches):
    mine = all_rows[b * t.batch_size + rows.start:b * t.batch_size + rows.stop]
    batches.append({key: np.stack([row[key] for row in mine]) for key in padding})
  return EvalSet(batches=batches, documents=num_examples, tokens=0, bytes=0)
