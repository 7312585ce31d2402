"""Prometheus text exposition for the model server, by hand (a few counters and two
histograms do not need a client library)."""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from http import HTTPStatus

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Histogram:
    """A Prometheus histogram: counts per upper bound, their sum and their number."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last: above every bucket
        self.sum = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket it fits under."""
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.n += 1

    def lines(self, name: str) -> list[str]:
        """The exposition lines of this histogram as ``name``: cumulative buckets, sum, count."""
        out, running = [], 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            running += count
            out.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.n}')
        out += [f"{name}_sum {self.sum:.6f}", f"{name}_count {self.n}"]
        return out


class ServerMetrics:
    """What /metrics reports: requests by path and status, latency, batch sizes, model reloads
    and refusals; safe to update from several threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()  # (path, status) -> count
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch_rows = Histogram(BATCH_BUCKETS)
        self.reloads = 0
        self.refusals = 0
        self.refused: tuple[str, str] | None = None  # the last refused version, and why

    def refusal(self, version: str, reason: str) -> bool:
        """Count a refused model version; False when it is the one refused last time."""
        with self.lock:
            if self.refused is not None and self.refused[0] == version:
                return False
            self.refusals += 1
            self.refused = (version, reason)
            return True

    def request(self, path: str, status: int, seconds: float) -> None:
        """Count one answered request; the latency is kept for /predict only."""
        with self.lock:
            self.requests[(path, status)] += 1
            if path == "/predict":
                self.latency.observe(seconds)

    def batch(self, rows: int) -> None:
        """Count one forward pass of ``rows`` rows."""
        with self.lock:
            self.batch_rows.observe(rows)

    def text(self, model_version: str) -> str:
        """The /metrics page in Prometheus text format, with ``model_version`` as the one served."""
        with self.lock:
            lines = [
                "# HELP orchestrator_requests_total HTTP requests by path and status.",
                "# TYPE orchestrator_requests_total counter",
            ]
            lines += [
                f'orchestrator_requests_total{{path="{p}",status="{s}"}} {n}'
                for (p, s), n in sorted(self.requests.items())
            ]
            errors = sum(n for (_, s), n in self.requests.items() if s >= HTTPStatus.BAD_REQUEST)
            lines += [
                "# HELP orchestrator_errors_total Requests answered 4xx or 5xx.",
                "# TYPE orchestrator_errors_total counter",
                f"orchestrator_errors_total {errors}",
                "# HELP orchestrator_predict_seconds Latency of /predict.",
                "# TYPE orchestrator_predict_seconds histogram",
                *self.latency.lines("orchestrator_predict_seconds"),
                "# HELP orchestrator_batch_rows Rows per forward pass (micro-batches).",
                "# TYPE orchestrator_batch_rows histogram",
                *self.batch_rows.lines("orchestrator_batch_rows"),
                "# HELP orchestrator_model_reloads_total Model versions swapped in.",
                "# TYPE orchestrator_model_reloads_total counter",
                f"orchestrator_model_reloads_total {self.reloads}",
                "# HELP orchestrator_model_refusals_total Model versions refused on "
                "reload (the served one was kept).",
                "# TYPE orchestrator_model_refusals_total counter",
                f"orchestrator_model_refusals_total {self.refusals}",
            ]
            if self.refused is not None:
                version, reason = (_label(v) for v in self.refused)
                lines += [
                    "# HELP orchestrator_model_refused_info The last refused version.",
                    "# TYPE orchestrator_model_refused_info gauge",
                    f'orchestrator_model_refused_info{{version="{version}",reason="{reason}"}} 1',
                ]
            lines += [
                "# HELP orchestrator_model_info The model being served.",
                "# TYPE orchestrator_model_info gauge",
                f'orchestrator_model_info{{version="{model_version}"}} 1',
            ]
        return "\n".join(lines) + "\n"


def _label(value: str, most: int = 500) -> str:
    """A Prometheus label value: escaped, and short."""
    value = value if len(value) <= most else value[: most - 3] + "..."
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
