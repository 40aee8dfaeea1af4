"""Batch export: every user's recommendations to Parquet or CSV (``writer``), in resumable,
verified parts (``parts``)."""
