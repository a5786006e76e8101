"""Antex: a self-hosted Anthropic-compatible API gateway with rolling credit windows."""

__version__ = "0.1.0"
