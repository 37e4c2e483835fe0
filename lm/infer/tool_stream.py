"""Tool calls streamed as the Messages API streams them, while the model writes them.

A call in the reply text (lm/infer/tools.py: `<tool_call>{"name":"add","input":{"a":1}}
</tool_call>`) becomes, as soon as its name is written,

    content_block_start   {"type": "tool_use", "id", "name", "input": {}}
    content_block_delta   {"type": "input_json_delta", "partial_json": ...}   (repeated)
    content_block_stop

where the partial_json pieces, joined, are the call's input exactly as the model wrote it
(JSON once complete; the SDK parses the pieces as they come). Each snapshot's new input text
is one delta. The grammar writes the name before the input, so the block can open early;
the input's end is where `json.JSONDecoder.raw_decode` finds a complete value (the input is
an object: every character before that end belongs to it). A call that max_tokens or a stop
sequence cuts is closed where it stops: its block holds the partial input (the non-streamed
reply leaves such a call out).
"""

import json
import re
from typing import Iterator, Sequence

from lm.infer import tools as tools_lib

_DECODER = json.JSONDecoder()


def settled(text: str, final: bool, hold: int) -> str:
  """The part of a growing text that later snapshots keep: all of it once final; before
  that, without an unfinished UTF-8 character and the last `hold` characters (they could
  still become a stop sequence, which the final text drops)."""
  if final:
    return text
  text = text.rstrip("\ufffd")
  return text[:len(text) - hold] if hold else text


class CallStream:
  """The tool_use block events of one reply, from successive snapshots of its text.

  `update(text, final)` takes the whole reply text so far and yields the events it adds;
  `calls` lists the complete calls ({"id", "name", "input"}) in order.
  """

  def __init__(self, form: tools_lib.CallFormat, stop_sequences: Sequence[str] = (),
               first_index: int = 0):
    self.form = form
    self.hold = max((len(s) for s in stop_sequences), default=1) - 1
    self.index = first_index   # the content block index of the next (or open) call
    self.calls: list[dict] = []
    self._head = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"'
                            + re.escape(form.arguments) + r'"\s*:\s*(?=\S)')
    self._search = 0           # where the next call's opening is looked for
    self._open: dict | None = None  # the call being streamed: id, name, start, sent

  @property
  def open(self) -> bool:
    """Whether a tool_use block has started and not yet stopped."""
    return self._open is not None

  def started(self, text: str) -> bool:
    """Whether the text holds a call's opening (the reply's text block has ended)."""
    return self.form.open in text

  def update(self, text: str, final: bool) -> Iterator[dict]:
    text = settled(text, final, self.hold)
    while True:
      if self._open is None:
        start = self._start(text)
        if start is None:
          return
        yield start
      call = self._open
      body = text[call["start"]:]
      if not body.startswith(call["sent"]):  # the decoder revised earlier text: send no more
        return
      try:
        value, end = _DECODER.raw_decode(body)
      except ValueError:
        value, end = None, len(body)
      if body[len(call["sent"]):end]:
        yield {"type": "content_block_delta", "index": self.index,
               "delta": {"type": "input_json_delta", "partial_json": body[len(call["sent"]):end]}}
        call["sent"] = body[:end]
      if value is None and not final:
        return
      yield {"type": "content_block_stop", "index": self.index}
      if value is not None:
        self.calls.append({"id": call["id"], "name": call["name"], "input": value})
      self._search, self._open = call["start"] + end, None
      self.index += 1
      if value is None:
        return

  def _start(self, text: str) -> dict | None:
    """The next call's content_block_start, once its opening and name are written."""
    position = text.find(self.form.open, self._search)
    if position < 0:
      return None
    head = self._head.match(text, position + len(self.form.open))
    if head is None:
      return None
    self._open = {"id": tools_lib.new_id(), "name": json.loads(head.group(1)),
                  "start": head.end(), "sent": ""}
    return {"type": "content_block_start", "index": self.index,
            "content_block": {"type": "tool_use", "id": self._open["id"],
                              "name": self._open["name"], "input": {}}}
