"""Constitutional AI (Bai et al. 2022): critique -> revision data (SL-CAI), AI-feedback
preference labels (RL-CAI), and the pipeline that trains on them with the stages of
lm/stages/. It sits above the stages: it generates with lm/infer and trains with lm/stages."""
