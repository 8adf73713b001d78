"""Shared helpers for the Molecule testinfra verifiers (pytest finds this from any scenario)."""

from __future__ import annotations

import testinfra


def podman_host(name: str):
    """A testinfra host for the container `name` (scenarios name containers after hosts)."""
    return testinfra.get_host(f"podman://{name}")
