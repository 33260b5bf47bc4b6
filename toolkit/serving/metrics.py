"""Prometheus metrics of `adaptbench serve` (prometheus-client), on GET /metrics.

One registry per app, so two servers in one process (tests) count apart. Names follow
Prometheus conventions: counters end in _total, durations are in seconds.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,  # noqa: F401 -- the /metrics response type
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # no *_created series: a timestamp per label set that no panel uses

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("adaptbench_requests", "HTTP requests by arm, endpoint and status code",
                                ["arm", "endpoint", "status"], registry=r)
        self.latency = Histogram("adaptbench_request_latency_seconds", "Time from request to response, by arm",
                                 ["arm", "endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Histogram("adaptbench_queue_seconds", "Time a request waited for its batch, by arm",
                               ["arm"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("adaptbench_tokens", "Prompt and completion tokens, by arm", ["arm", "kind"], registry=r)
        self.batch = Histogram("adaptbench_batch_size", "Requests answered together in one batch",
                               buckets=BATCH_BUCKETS, registry=r)
        self.feedback = Counter("adaptbench_feedback", "Feedback received, by arm", ["arm"], registry=r)
        self.feedback_score = Summary("adaptbench_feedback_score", "Feedback scores (0 bad .. 1 good), by arm",
                                      ["arm"], registry=r)
        self.in_flight = Gauge("adaptbench_requests_in_flight", "Requests being answered now", registry=r)
        self.waiting = Gauge("adaptbench_queue_depth", "Requests waiting for a batch", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
