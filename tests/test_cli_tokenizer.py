"""`lm tokenizer`, end to end in a subprocess: trains on the config's data.source, and the
model it writes loads as data.tokenizer=spm:PATH."""

import os
import re
import subprocess
import sys

from lm.data import tokenizer as tokenizer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lm(*args):
  return subprocess.run([sys.executable, "-m", "lm", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_tokenizer_trains_on_the_config_source(tmp_path):
  from pydoc_data import topics  # pylint: disable=import-outside-toplevel
  for name in sorted(topics.topics)[:40]:
    (tmp_path / f"{name}.txt").write_text(topics.topics[name], encoding="utf-8")
  flags = ["--config=configs/tiny.py", f"--config.data.source=text:{tmp_path}/*.txt",
           f"--config.data.cache_dir={tmp_path / 'cache'}"]
  output = tmp_path / "out" / "spm.model"
  result = lm("tokenizer", *flags, f"--output={output}", "--vocab_size=400", "--max_chars=200000")
  assert result.returncode == 0, result.stderr
  assert f"Wrote {output}: bpe, vocab size 400." in result.stdout
  assert re.search(r"Compression: \d+\.\d\d bytes per token on \d+ held-out documents",
                   result.stdout)
  assert f"--config.data.tokenizer=spm:{output} --config.model.vocab_size=400" in result.stdout
  tok = tokenizer_lib.get(f"spm:{output}")
  text = topics.topics[sorted(topics.topics)[0]]
  assert tok.vocab_size == 400 and tok.decode(tok.encode(text)) == text

  too_big = lm("tokenizer", *flags, f"--output={output}.big", "--vocab_size=100000")
  assert too_big.returncode == 2 and "vocab_size=100000" in too_big.stderr
  assert not os.path.exists(f"{output}.big")
  missing = lm("tokenizer", *flags, f"--output={output}")
  assert missing.returncode != 0 and "--vocab_size" in missing.stderr
