#!/bin/bash
# Peak memory of the QLoRA train step: XLA's memory analysis of the compiled step (lm plan on
# the local CPU) for a small-but-not-tiny model (README, "LoRA and QLoRA"). The "before" row
# of the README's table was measured with this script at commit df4b418 (the whole base
# dequantized each step); run it from the repository root:
#   experiments/lora/memory.sh                                          # LoRA, float32 base
#   experiments/lora/memory.sh --config.lora.quantize=nf4 --config.lora.double_quant=True
#   experiments/lora/memory.sh --config.lora.quantize=nf4 --config.lora.double_quant=True \
#       --config.model.remat=none
python -m lm plan --config=configs/sft_tasks.py --config.init_from= \
  --config.model.preset=quickstart --config.model.d_model=512 --config.model.num_layers=8 \
  --config.model.num_heads=8 --config.model.num_kv_heads=2 --config.model.d_ff=2048 \
  --config.train.batch_size=2 --config.train.seq_len=128 --config.lora.rank=8 "$@"
