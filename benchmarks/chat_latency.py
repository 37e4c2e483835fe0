"""Time to the first reply of `lm chat`, as a user sees it: from starting the process to the
first character of the answer (start-up, loading, compilation and prefill included), then to
the end of each reply.

  python benchmarks/chat_latency.py --workdir=$(lm fetch smollm2-135m-instruct)

The questions are piped to `python -m lm chat --temperature=0` one line each; the reply
lines ("assistant> ...") are timed as they stream out.
"""

import os
import subprocess
import sys
import time

from absl import app
from absl import flags

QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.",
             "Name three prime numbers."]
FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "An lm workdir to chat with.", required=True)
flags.DEFINE_integer("max_new_tokens", 64, "Tokens per reply at most.")


def main(argv) -> None:
  del argv
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  start = time.perf_counter()
  process = subprocess.Popen(
      [sys.executable, "-u", "-m", "lm", "chat", f"--workdir={FLAGS.workdir}",
       "--temperature=0", f"--max_new_tokens={FLAGS.max_new_tokens}"], cwd=root,
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
  process.stdin.write("".join(q + "\n" for q in QUESTIONS).encode())
  process.stdin.close()
  buffer, turn, first = b"", 0, None
  while chunk := process.stdout.read1(1024):
    buffer += chunk
    now = time.perf_counter() - start
    text = buffer.decode(errors="ignore")
    if first is None and len(text.split("assistant> ", 1)[-1]) > 0 and "assistant> " in text:
      first = now
      print(f"first character of the first reply: {first:.1f}s after start")
    while "\n" in text.split("assistant> ", 1)[-1] and "assistant> " in text:
      line, _, rest = text.partition("\n")
      turn += 1
      print(f"reply {turn} done at {now:.1f}s: {line.strip()[:70]!r}")
      buffer, text = rest.encode(), rest
  process.wait()


if __name__ == "__main__":
  app.run(main)
