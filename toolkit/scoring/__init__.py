"""Scoring: the metric registry, metrics, statistics and the LLM judge."""
