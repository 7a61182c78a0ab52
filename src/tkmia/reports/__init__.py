"""Paper-style tables and figures, always re-derived from a run's records."""

from tkmia.reports.tables import latex_tables, markdown_tables

__all__ = ["latex_tables", "markdown_tables"]
