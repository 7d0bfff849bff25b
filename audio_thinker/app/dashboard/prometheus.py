"""Training metrics for Prometheus: `GET /metrics` of the dashboard exposes the last logged step of every run
under `--runs` as gauges labelled by run.

Why here and not in the driver (`ray.util.metrics`): the dashboard already reads every run directory, so one
scrape target covers every run on shared storage — running, finished or copied from another cluster — with
no extra port in the Ray job and nothing lost when the job restarts; the values are exactly those of
`metrics.jsonl`. `deploy/grafana/training-dashboard.json` is the board for these series.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from audio_thinker.app.dashboard.runs import STATES, RunIndex

PREFIX = "audio_thinker_"
CONTENT_TYPE = CONTENT_TYPE_LATEST


def metric_name(key: str) -> str:
    """`reward/total` -> `audio_thinker_reward_total` (Prometheus names: letters, digits, underscores)."""
    return PREFIX + re.sub(r"[^a-zA-Z0-9_]", "_", key).strip("_")


class RunCollector(Collector):
    def __init__(self, index: RunIndex):
        self.index = index

    def collect(self) -> Iterable[GaugeMetricFamily]:
        families: dict[str, GaugeMetricFamily] = {}

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ("run",)) -> GaugeMetricFamily:
            if name not in families:
                families[name] = GaugeMetricFamily(name, doc, labels=list(labels))
            return families[name]

        for run in self.index.scan():
            state, _ = run.status()
            gauge(PREFIX + "step", "Last logged training step.").add_metric([run.name], run.last_step)
            if run.total_steps is not None:
                gauge(PREFIX + "total_steps", "run.total_steps (T).").add_metric([run.name], run.total_steps)
            states = gauge(PREFIX + "run_state", "1 for the run's state.", ("run", "state"))
            for s in STATES:
                states.add_metric([run.name, s], float(s == state))
            for key, value in run.metrics.last().items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    gauge(metric_name(key), f"{key} of the last logged step.").add_metric([run.name], float(value))
        return list(families.values())


def exposition(index: RunIndex) -> bytes:
    """The text exposition format of every run's last step."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunCollector(index))
    return generate_latest(registry)
