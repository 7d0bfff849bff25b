"""`GET /metrics`: every run's last logged step as Prometheus gauges labelled by run."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from audio_thinker.app.dashboard.prometheus import metric_name
from audio_thinker.app.dashboard.server import create_app
from audio_thinker.app.dashboard.synthetic_run import write_synthetic_run

ROOT = Path(__file__).resolve().parents[2]


def write_run(root, name, rows, total_steps, status=None):
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"run:\n  total_steps: {total_steps}\n")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if status:
        (run / "status.json").write_text(json.dumps({"state": status}))


def scrape(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def test_metric_names_are_prometheus_names():
    assert metric_name("reward/total") == "audio_thinker_reward_total"
    assert metric_name("no_think_rate/easy") == "audio_thinker_no_think_rate_easy"
    assert metric_name("timing_s/judge") == "audio_thinker_timing_s_judge"


def test_the_last_step_of_every_run_is_exposed(tmp_path):
    write_run(
        tmp_path, "a", [{"step": 1, "reward/total": 0.5}, {"step": 2, "reward/total": 0.75, "think_rate": 0.25}], 4
    )
    write_run(tmp_path, "b", [{"step": 3, "reward/total": -1.0, "flag": True}], 3, status="finished")
    with (tmp_path / "b" / "metrics.jsonl").open("a") as f:
        f.write("{broken\n")  # skipped (and warned about on the pages), never a 500
    samples = scrape(TestClient(create_app(tmp_path)))
    assert samples[("audio_thinker_reward_total", (("run", "a"),))] == 0.75
    assert samples[("audio_thinker_think_rate", (("run", "a"),))] == 0.25
    assert samples[("audio_thinker_reward_total", (("run", "b"),))] == -1.0
    assert (
        samples[("audio_thinker_step", (("run", "a"),))] == 2
        and samples[("audio_thinker_total_steps", (("run", "a"),))] == 4
    )
    assert samples[("audio_thinker_run_state", (("run", "b"), ("state", "finished")))] == 1.0
    assert samples[("audio_thinker_run_state", (("run", "b"), ("state", "running")))] == 0.0
    assert not any(name == "audio_thinker_flag" for name, _ in samples)  # booleans are not gauges


def test_metrics_need_the_token_like_every_page(tmp_path):
    write_run(tmp_path, "a", [{"step": 1, "reward/total": 0.5}], 2)
    client = TestClient(create_app(tmp_path, token="s3cret"))
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_the_grafana_training_board_asks_only_for_exposed_series(tmp_path):
    """Every series deploy/grafana/training-dashboard.json plots is one /metrics exposes for a run whose
    metrics have the driver's keys (the synthetic run writes them)."""
    write_synthetic_run(tmp_path / "r", steps=2, total_steps=4, questions=1, group=2)
    exposed = {name for name, _ in scrape(TestClient(create_app(tmp_path)))}
    board = json.loads((ROOT / "deploy" / "grafana" / "training-dashboard.json").read_text())
    asked = {m for p in board["panels"] for t in p["targets"] for m in re.findall(r"audio_thinker_[a-z_]+", t["expr"])}
    assert len(board["panels"]) >= 8 and asked and asked <= exposed, asked - exposed
