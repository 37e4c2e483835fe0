"""Open checkpoints: Hugging Face models in and out (`hf`), and `lm convert` / `init_from`."""
