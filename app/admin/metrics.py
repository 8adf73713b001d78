"""Prometheus metrics of the admin app itself: request counts and latency.

Under gunicorn several processes serve requests, so when PROMETHEUS_MULTIPROC_DIR is set
(gunicorn.conf.py wipes it at start, child_exit marks dead workers) each scrape builds a
fresh registry with a MultiProcessCollector over the per-process files, as client_python's
multiprocess guide does. Without it (dev server, tests) the default registry is served.
"""

from __future__ import annotations

import os
import time

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from app.admin.auth import require

REQUESTS = Counter("clarity_admin_requests_total", "HTTP requests served by the admin app",
                   ["method", "endpoint", "status"])
LATENCY = Histogram("clarity_admin_request_duration_seconds",
                    "Time spent serving admin app requests", ["endpoint"],
                    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))

bp = Blueprint("metrics", __name__)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@bp.get("/metrics")
@require("metrics")
def metrics():
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def init_app(app: Flask) -> None:
    @app.before_request
    def _start_timer():
        g.clarity_started = time.perf_counter()

    @app.after_request
    def _observe(response):
        started = g.get("clarity_started")
        if started is not None:
            # The endpoint name, not the path: paths carry ids and would explode the labels.
            endpoint = request.endpoint or "unmatched"
            # Methods too: any token is a valid method to Werkzeug, and an anonymous
            # client inventing new ones must not add label series.
            method = request.method if request.method in METHODS else "other"
            LATENCY.labels(endpoint).observe(time.perf_counter() - started)
            REQUESTS.labels(method, endpoint, str(response.status_code)).inc()
        return response
