"""docs/handlers.md's example runs as written: its handler module is loaded by a real
worker (TASK_MODULES), its settings class loads, and its test passes with the suite's own
fixtures."""

from __future__ import annotations

import importlib
import re
import sys

from app.devstack import REPO


def doc_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "docs" / "handlers.md").read_text(),
                      flags=re.DOTALL)


def test_the_handler_guide_example_runs_as_written(configure, redis_server, workers,
                                                   tmp_path, monkeypatch):
    module, settings_example, test_code = doc_blocks()
    (tmp_path / "price_alerts.py").write_text(module)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the worker processes import it too

    # Each block as the module it would be in a project (pydantic resolves a settings
    # class's annotations through its module).
    (tmp_path / "price_alert_settings.py").write_text(settings_example)
    (tmp_path / "doc_test_price_alerts.py").write_text(test_code)
    settings_module = importlib.import_module("price_alert_settings")
    assert settings_module.price_alert_settings().price_alert_min_move == 0.05
    test_module = importlib.import_module("doc_test_price_alerts")
    tests = [f for name, f in vars(test_module).items() if name.startswith("test_")]
    assert len(tests) == 1
    try:
        tests[0](configure, redis_server, workers)
    finally:
        for name in ("price_alerts", "price_alert_settings", "doc_test_price_alerts"):
            sys.modules.pop(name, None)
