"""The Textual review app. Widgets call the pipeline (app/review.py); no SQL or model calls live here."""
