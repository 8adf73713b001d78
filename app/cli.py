"""The `clarity` console script: the worker's commands plus the producer-side ones.

`worker` never imports `app`, so the commands that need the admin app, the local stack or
the migration tooling are attached here.
"""

from __future__ import annotations

import importlib

from worker.cli import main

# (module, attribute): each is attached when its module is present and importable.
_COMMANDS = [
    ("worker.db.cli", "db"),
    ("app.admin.cli", "admin"),
    ("app.local_stack", "up"),
    ("app.doctor", "doctor"),
    ("app.migration.cli", "migrate"),
    ("app.migration.cli", "legacy"),
]

for module_name, attr in _COMMANDS:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            continue  # that part of the system is not installed in this build
        raise
    main.add_command(getattr(module, attr))

__all__ = ["main"]
