"""Data files of the built-in prompt styles (TOML) and the few-shot pool (JSONL). Code is in app/prompts.py."""
