"""Clarity job system: queue core, task handlers and worker runtime."""

__version__ = "0.1.0"
