"""Resumable JSONL outputs: a generation command appends one record per finished prompt and
flushes it, so a killed run continues where it stopped with no record lost or duplicated.

    out = ResumableJsonl("runs/cai/critique/records.jsonl", prompts_fingerprint)
    todo = [i for i in range(len(prompts)) if i not in out.done]
    out.append([{"id": i, ...}, ...])      # whole records only, flushed and fsynced

A record is keyed by "id", the index of its prompt in the command's prompt list. A kill can
leave a partial last line: it is cut off on open (that prompt is simply done again). A file
written for other prompts (its first line, a header, holds their fingerprint) is an error
naming the file, not silently mixed.
"""

import hashlib
import json
import os
from typing import Any, Iterable, Sequence


def fingerprint(items: Sequence[Any], **settings: Any) -> str:
  """A hash of the prompts and the settings that shape the records."""
  digest = hashlib.sha256(json.dumps([list(items), settings], sort_keys=True,
                                     default=str).encode())
  return digest.hexdigest()[:16]


def read(path: str) -> list[dict]:
  """The records of a finished or partial file (header and any partial last line skipped)."""
  out = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      if not line.endswith("\n"):
        break
      record = json.loads(line)
      if "header" not in record:
        out.append(record)
  return out


class ResumableJsonl:
  """An append-only JSONL file of records keyed by "id"; `done` holds the ids written."""

  def __init__(self, path: str, fingerprint_: str):
    self.path = path
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    self.done: set[int] = set()
    if os.path.exists(path):
      self._recover(fingerprint_)
    else:
      with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"header": {"fingerprint": fingerprint_}}) + "\n")

  def _recover(self, fingerprint_: str) -> None:
    with open(path := self.path, "rb") as f:
      data = f.read()
    complete = data[:data.rfind(b"\n") + 1]          # a partial last line is dropped
    lines = complete.decode("utf-8").splitlines()
    header = json.loads(lines[0]).get("header", {}) if lines else {}
    if lines and header.get("fingerprint") != fingerprint_:
      raise ValueError(f"{path} was written for other prompts or settings (fingerprint "
                       f"{header.get('fingerprint')}, now {fingerprint_}); use another "
                       "workdir or delete it")
    if not lines:
      complete = (json.dumps({"header": {"fingerprint": fingerprint_}}) + "\n").encode()
    if len(complete) != len(data):
      with open(path, "wb") as f:
        f.write(complete)
    for line in lines[1:]:
      record = json.loads(line)
      if record["id"] in self.done:
        raise ValueError(f"{path}: record id {record['id']} occurs twice")
      self.done.add(record["id"])

  def append(self, records: Iterable[dict]) -> None:
    """Writes whole records and makes them durable before returning."""
    records = list(records)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    for record in records:
      self.done.add(record["id"])
