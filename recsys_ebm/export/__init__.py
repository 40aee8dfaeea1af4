"""Batch export: every user's recommendations to Parquet or CSV (``writer``), in resumable,
verified parts (``parts``). The package's API is the writer's."""

from recsys_ebm.export.writer import ExportConfig, ExportResult, export_recommendations

__all__ = ["ExportConfig", "ExportResult", "export_recommendations"]
