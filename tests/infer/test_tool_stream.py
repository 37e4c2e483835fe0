"""Tool calls streamed while written (lm/infer/tool_stream.py), from hand-made snapshots:
the events are checked against the calls as tools.py writes and parses them."""

import json

from lm.infer import tool_stream
from lm.infer import tools as tools_lib

ADD = {"a": 1, "b": {"c": "x}\"y"}}   # a brace and an escaped quote inside a string


def events_of(text: str, form=tools_lib.DEFAULT_FORMAT, step: int = 5, stops=()):
  """The events of `text` arriving `step` characters at a time (the last snapshot final)."""
  stream = tool_stream.CallStream(form, stops)
  events = []
  for end in range(step, len(text) + step, step):
    events += stream.update(text[:end], final=end >= len(text))
  return events, stream.calls


def blocks(events):
  """{index: (name, the joined partial_json)} and whether every block opened and stopped."""
  out, stopped = {}, set()
  for e in events:
    if e["type"] == "content_block_start":
      assert e["index"] not in out and e["content_block"]["input"] == {}
      out[e["index"]] = (e["content_block"]["name"], "")
    elif e["type"] == "content_block_delta":
      assert e["index"] in out and e["index"] not in stopped
      name, text = out[e["index"]]
      out[e["index"]] = (name, text + e["delta"]["partial_json"])
    else:
      assert e["type"] == "content_block_stop"
      stopped.add(e["index"])
  assert stopped == set(out)
  return out


def test_calls_stream_in_pieces_that_join_to_their_input():
  text = ("Sure." + tools_lib.write_call("add", ADD, tools_lib.DEFAULT_FORMAT)
          + tools_lib.write_call("ping", {}, tools_lib.DEFAULT_FORMAT))
  events, calls = events_of(text)
  assert blocks(events) == {0: ("add", json.dumps(ADD, separators=(",", ":"))),
                            1: ("ping", "{}")}
  deltas = [e for e in events if e["type"] == "content_block_delta"]
  assert len(deltas) > 3 and all(len(e["delta"]["partial_json"]) <= 5 for e in deltas)
  assert [(c["name"], c["input"]) for c in calls] == [
      (c["name"], c["input"]) for c in tools_lib.split_calls(text, tools_lib.DEFAULT_FORMAT)[1]]
  assert all(c["id"].startswith("toolu_") for c in calls)
  # The block opens as soon as the name is written, before the input is complete.
  assert events[0]["type"] == "content_block_start" and events[1]["type"] != "content_block_stop"


def test_hermes_form_with_whitespace():
  text = tools_lib.write_call("add", {"a": 4, "b": 5}, tools_lib.HERMES_FORMAT).replace(
      '{"name":"add","arguments":', '{ "name": "add",\n "arguments": ')
  events, calls = events_of(text, tools_lib.HERMES_FORMAT, step=3)
  assert blocks(events) == {0: ("add", '{"a":4,"b":5}')}
  assert calls[0]["input"] == {"a": 4, "b": 5}


def test_a_cut_call_is_closed_with_its_partial_input_and_not_counted():
  text = tools_lib.write_call("add", ADD, tools_lib.DEFAULT_FORMAT)[:-20]
  events, calls = events_of(text, step=4)
  assert blocks(events) == {0: ("add", text[len('<tool_call>{"name":"add","input":'):])}
  assert calls == []


def test_held_back_characters_could_still_become_a_stop_sequence():
  stream = tool_stream.CallStream(tools_lib.DEFAULT_FORMAT, ["STOP"])
  head = '<tool_call>{"name":"add","input":{"a":"xyz'
  events = list(stream.update(head, final=False))
  assert blocks(events + [{"type": "content_block_stop", "index": 0}]) == {
      0: ("add", '{"a":"')}   # "xyz" might begin "STOP": held
  assert not list(stream.update(head + "\ufffd", final=False))  # nor an unfinished character
