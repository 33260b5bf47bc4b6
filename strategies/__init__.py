"""Strategies: one module each, all behind the protocol in strategies/base.py."""
