"""Serving: an OpenAI-compatible HTTP API in front of a model (and, later, an arm)."""
