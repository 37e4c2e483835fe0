"""Reference log-probabilities computed once (`dpo.precompute_reference=True`), so that the
frozen copy of the model need not sit in memory beside the policy while it trains.

Letters: N records, B pairs.

Before the first step, the model at its start (the reference) scores every pair of the
training and held-out records: its summed log-probability of each reply, [N, 2] (chosen,
rejected) per split. The tables are written to `<workdir>/reference_logps.safetensors`,
keyed by what they depend on (the start: `init_from` or the seed; the records; the rendering),
and read back on resume: a table follows its records by index, so the batches carry each
pair's reference beside its tokens (`chosen_reference`, `rejected_reference` [B]) however the
stream is shuffled, sharded or resumed. The cost is one forward pass over every record, once.
"""

import dataclasses
import json
from typing import Any, Callable, Sequence

from absl import logging
from etils import epath
import jax
import numpy as np
from safetensors import numpy as safetensors_numpy

from lm.stages import pairs

FILE = "reference_logps.safetensors"
FIELD = pairs.REFERENCE     # the record field a table adds: [2] (chosen, rejected)
SPLITS = ("train", "eval")

# (fn, batch) -> fn(apply, params, batch) at the model's start, on host: the loop's StartModel
RunAtStart = Callable[[Callable, dict[str, np.ndarray]], Any]


@dataclasses.dataclass(frozen=True)
class WithReference:
  """`records` with each one's reference log-probs [2] as field FIELD (grain pickles it)."""
  records: Sequence
  logps: np.ndarray   # [N, 2]

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, i: int) -> dict:
    return {**self.records[i], FIELD: self.logps[i]}


def key(config: Any, counts: dict[str, int]) -> dict:
  """What the tables depend on: a saved table with another key is computed again."""
  d, t = config.data, config.train
  return {"init_from": config.init_from, "seed": config.seed,
          "model": json.loads(config.model.to_json_best_effort()),
          "lora": json.loads(config.lora.to_json_best_effort()), "source": d.source,
          "fields": d.fields,
          "tokenizer": d.tokenizer, "seq_len": t.seq_len, "truncate": d.truncate,
          "counts": counts}


def compute(records: Sequence, row: pairs.PairRow, batch_size: int, rows: slice,
            run: RunAtStart, logps_fn: Callable) -> np.ndarray:
  """[N, 2] summed reply log-probs of every record (0 for records the stage skips), in
  global batches of `batch_size` pairs of which this process feeds `rows`."""
  padding = {k: np.zeros_like(v[0]) for k, v in pairs.example_batch(1, row.seq_len).items()}
  out = np.zeros((len(records), 2), np.float32)
  for start in range(0, len(records), batch_size):
    ids = range(start, min(start + batch_size, len(records)))
    converted = [row(records[i]) for i in ids]
    kept = [r if r is not None else padding for r in converted]
    kept += [padding] * (batch_size - len(kept))
    mine = kept[rows.start:rows.stop]
    batch = {k: np.stack([r[k] for r in mine]) for k in padding}
    logps = np.asarray(run(logps_fn, batch))                     # [B, 2]
    out[start:start + len(ids)] = logps[:len(ids)]
  return out


def load_or_compute(workdir: str, splits: dict[str, Sequence], config: Any, row: pairs.PairRow,
                    rows: slice, run: RunAtStart, logps_fn: Callable) -> dict[str, np.ndarray]:
  """{split: [N, 2]}: the workdir's tables when their key matches, else computed and saved."""
  path = epath.Path(workdir) / FILE
  want = key(config, {name: len(records) for name, records in splits.items()})
  if path.exists():
    saved, metadata = _read(path)
    if json.loads(metadata.get("key", "null")) == json.loads(json.dumps(want)):
      logging.info("Reference log-probs read from %s", path)
      return saved
    logging.warning("%s was computed for another start or data: computing it again", path)
  tables = {name: compute(records, row, config.train.batch_size, rows, run, logps_fn)
            for name, records in splits.items()}
  if jax.process_index() == 0:
    path.write_bytes(safetensors_numpy.save(tables, metadata={"key": json.dumps(want)}))
  logging.info("Reference log-probs of %s pairs computed and saved in %s",
               " + ".join(str(len(t)) for t in tables.values()), path)
  return tables


def _read(path: epath.Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  data = path.read_bytes()
  header_size = int.from_bytes(data[:8], "little")
  metadata = json.loads(data[8:8 + header_size]).get("__metadata__", {})
  return dict(safetensors_numpy.load(data)), metadata
