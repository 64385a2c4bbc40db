"""Adapters to the outside services; each wraps its library's errors into ``streams.errors``."""
