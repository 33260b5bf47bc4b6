"""Reporting: the report (markdown, HTML, terminal), figures, the recommendation and run-to-run
comparison, all rendered from run directories."""
