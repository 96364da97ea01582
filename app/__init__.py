"""The pipeline (ingest, prompt styles, generation, review actions, export) and its two faces: CLI and TUI."""
