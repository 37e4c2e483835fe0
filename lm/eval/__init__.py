"""`lm eval`: built-in task exact match, multiple-choice log-likelihood, perplexity / bits per
byte; one results JSON per run (lm/eval/run.py puts them together)."""
