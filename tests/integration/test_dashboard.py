"""The dashboard in a real browser (Debian's headless chromium driven by Playwright) against a real tiny training
run that is still writing: `audio-thinker train` runs as a subprocess while the pages are checked.

With AUDIO_THINKER_SCREENSHOTS=<folder> the three pages are also saved as PNGs there (docs/img/).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from playwright import sync_api

from audio_thinker.app.dashboard.server import create_app
from conftest import CLI_RUN_STEPS, free_port

CHROMIUM = shutil.which("chromium")
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STEPS = CLI_RUN_STEPS
GROUP = 8
TERMS = ("format", "accuracy", "consistency_reward", "think_reward", "total", "advantage")
SHOTS = os.environ.get("AUDIO_THINKER_SCREENSHOTS")


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None and not predicate():
            tail = log.read_text()[-3000:] if log else ""
            raise AssertionError(f"training exited ({proc.returncode}) before {what}:\n{tail}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def metric_lines(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


@pytest.fixture(scope="module")
def live_run(cli_run):
    """The suite's `audio-thinker train` subprocess (tests/conftest.py), still writing while these tests run."""
    return cli_run


@pytest.fixture(scope="module")
def dashboard(live_run):
    """The dashboard app under uvicorn on a free loopback port (a thread of this process)."""
    run, _, _ = live_run
    run.parent.mkdir(parents=True, exist_ok=True)
    server = uvicorn.Server(
        uvicorn.Config(create_app(run.parent), host="127.0.0.1", port=free_port(), log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30, "the dashboard to start")
    yield f"http://127.0.0.1:{server.config.port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def page(dashboard):
    # `make test` installs both (make browser); a missing browser is a failure, never a silent skip.
    assert CHROMIUM is not None, "Debian's chromium is not installed: run `make browser`"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(base_url=dashboard, viewport={"width": 1400, "height": 900})
        yield context.new_page()
        browser.close()


def shot(page, name: str, height: int = 900) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / name), clip={"x": 0, "y": 0, "width": 1400, "height": height})


def wait_ready(page) -> None:
    """Every chart drawn (those off screen are drawn after the first screen). A function, not an expression: the
    pages' Content-Security-Policy allows no eval, which Playwright's expression form needs."""
    page.wait_for_function("() => document.body.dataset.complete === '1'", timeout=30_000)


def test_runs_page_shows_the_running_run(live_run, page):
    run, proc, log = live_run
    wait_for(lambda: (run / "config.yaml").is_file(), 900, "the run directory", proc, log)
    page.goto("/")
    row = page.locator('tr.run-row[data-run="live"]')
    sync_api.expect(row).to_be_visible()
    assert row.get_attribute("data-state") == "running"
    assert f"/ {STEPS}" in row.locator("td.step").inner_text()


def test_a_new_step_appears_without_reload(live_run, page):
    """A step written while the page is open appears without a reload. The test writes that step itself, into a
    copy of the live run's first step: the tiny run's steps take seconds, less than a page takes to open and
    draw, so watching the run itself would race it."""
    run, proc, log = live_run
    wait_for(lambda: len(metric_lines(run)) >= 2, 900, "step 2", proc, log)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    replay = run.parent / "replay"
    replay.mkdir()
    try:
        shutil.copy(run / "config.yaml", replay / "config.yaml")
        (replay / "status.json").write_text(json.dumps({"state": "running", "message": None, "time": time.time()}))
        (replay / "metrics.jsonl").write_text(lines[0] + "\n")
        page.goto("/runs/replay")
        wait_ready(page)
        assert int(page.evaluate("document.body.dataset.lastStep")) == 1
        page.evaluate("window.notReloaded = true")
        with (replay / "metrics.jsonl").open("a") as f:
            f.write(lines[1] + "\n")
        page.wait_for_function("() => Number(document.body.dataset.lastStep) > 1", timeout=120_000)
        assert page.evaluate("window.notReloaded") is True
        assert int(page.evaluate("document.body.dataset.lastStep")) == 2
        assert page.evaluate("document.getElementById('chart-reward').data[0].x.length") == 2
        assert page.locator("#last-step").inner_text() == "2"
    finally:
        shutil.rmtree(replay)


def test_charts_have_one_point_per_step(live_run, page):
    run, proc, log = live_run
    wait_for(lambda: proc.poll() is not None, 600, "the run to finish")
    assert proc.returncode == 0, log.read_text()[-3000:]
    lines = metric_lines(run)
    assert [m["step"] for m in lines] == list(range(1, STEPS + 1))
    page.goto("/runs/live")
    wait_ready(page)
    sync_api.expect(page.locator("#state")).to_have_text("finished")
    for chart, key in [("reward", "reward/total"), ("think", "think_rate"), ("kl", "actor/kl")]:
        traces = page.evaluate(f"document.getElementById('chart-{chart}').data.map(t => [t.meta, t.x, t.y])")
        _, xs, ys = next(t for t in traces if t[0] == key)
        assert xs == [m["step"] for m in lines]
        assert all(math.isclose(y, m[key], rel_tol=1e-9) for y, m in zip(ys, lines))
    timing = page.evaluate("document.getElementById('chart-timing').data.map(t => t.type || 'scatter')")
    assert "bar" in timing and page.evaluate("document.getElementById('chart-timing').layout.barmode") == "stack"
    assert page.locator("#chart-eval").count() == 1  # the final evaluation
    shot(page, "dashboard-run.png")
    page.goto("/")
    shot(page, "dashboard-runs.png", height=260)


def dump_rows(run: Path, step: int) -> list[dict]:
    return [json.loads(x) for x in (run / "rollouts" / f"step_{step:06d}.jsonl").read_text().splitlines()]


def test_rollout_browser_shows_every_sample_with_the_dumped_terms(live_run, page):
    run, _, _ = live_run
    rows = dump_rows(run, STEPS)
    page.goto(f"/runs/live/rollouts?step={STEPS}")
    questions = page.locator("section.question")
    assert questions.count() == len({r["question_id"] for r in rows}) == 2
    shown = page.evaluate(
        """[...document.querySelectorAll('section.question')].map(q => [q.dataset.question,
             [...q.querySelectorAll('article.sample')].map(s => [Number(s.dataset.sample), s.dataset.mode,
               Object.fromEntries([...s.querySelectorAll('td[data-term]')].map(td => [td.dataset.term,
                 Number(td.dataset.value)]))])])"""
    )
    by_key = {(r["question_id"], r["sample"]): r for r in rows}
    for qid, samples in shown:
        assert len(samples) == GROUP
        for sample, mode, terms in samples:
            row = by_key[(qid, sample)]
            assert mode == row["mode"]
            for term in TERMS:
                assert math.isclose(terms[term], row[term], rel_tol=1e-12, abs_tol=1e-12), (qid, sample, term)
    shot(page, "dashboard-rollouts.png")


def test_the_audio_element_loads_the_clip(page):
    page.goto(f"/runs/live/rollouts?step={STEPS}")
    audio = page.locator("audio").first
    duration = audio.evaluate(
        """a => new Promise((ok, fail) => {
             if (a.readyState >= 1) return ok(a.duration);
             a.addEventListener('loadedmetadata', () => ok(a.duration));
             a.addEventListener('error', () => fail(new Error('audio error ' + (a.error && a.error.code))));
             a.preload = 'metadata';  // the page loads no clip until asked (preload=none)
             a.load();
           })"""
    )
    assert duration > 0
    src = audio.get_attribute("src")
    ranged = page.request.get(src, headers={"Range": "bytes=0-43"})
    assert ranged.status == 206 and ranged.headers["content-type"] == "audio/wav" and ranged.body()[:4] == b"RIFF"
    whole = page.request.get(src)
    assert whole.status == 200 and whole.headers["content-type"] == "audio/wav"


def test_a_filter_narrows_the_list(live_run, page):
    run, _, _ = live_run
    rows = dump_rows(run, STEPS)
    page.goto(f"/runs/live/rollouts?step={STEPS}")
    assert page.locator("article.sample").count() == len(rows)
    question = rows[0]["question_id"]
    page.fill("input[name=q]", question)
    page.click("#apply")
    page.wait_for_url("**q=*")
    assert page.locator("article.sample").count() == sum(r["question_id"] == question for r in rows) < len(rows)
    modes = {r["mode"] for r in rows}
    mode = min(modes, key=lambda m: sum(r["mode"] == m for r in rows))
    page.goto(f"/runs/live/rollouts?step={STEPS}")
    page.select_option("select[name=mode]", mode)
    page.click("#apply")
    page.wait_for_url(f"**mode={mode}*")
    assert page.locator("article.sample").count() == sum(r["mode"] == mode for r in rows)
    assert {m.get_attribute("data-mode") for m in page.locator("article.sample").all()} == {mode}


def test_follow_a_question_across_steps(live_run, page):
    run, _, _ = live_run
    question = dump_rows(run, STEPS)[0]["question_id"]
    page.goto(f"/runs/live/questions/{question}")
    wait_ready(page)  # the chart is drawn once plotly has loaded, after the first paint
    steps = [s for s in range(1, STEPS + 1) if any(r["question_id"] == question for r in dump_rows(run, s))]
    assert page.locator("table.history tbody tr").count() == len(steps)
    assert page.evaluate("document.getElementById('chart-question').data.length") == 2


def test_path_traversal_is_refused(live_run, page):
    run, _, _ = live_run
    for url, status in [
        ("/runs/live/audio?path=../../../../../../etc/passwd", 404),
        (f"/runs/live/audio?path={run / 'config.yaml'}", 404),
        ("/runs/live/audio?path=%2Fetc%2F..%2Fetc%2Fhostname.wav", 404),
        ("/runs/..%2F..%2Fetc/audio?path=x.wav", 404),
        ("/static/..%2F..%2Fruns.py", 404),
    ]:
        assert page.request.get(url).status == status, url


def test_the_training_console_is_quiet_and_the_logs_are_in_the_run_directory(live_run):
    """What a user of `make demo` sees: a line per actor group as it is ready, a line per step, the closing lines
    and warnings; the engines' and actors' output is in <run>/logs/. The run's three faults (a worker, the
    reference, a trainer rank killed: test_run_recovery.py) are a warning line each; Ray's own reports of the dead
    processes and of the failed calls' peers are in driver.log or read, never on the console. (Runs last: it waits
    for the training to end.)"""
    run, proc, log = live_run
    assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    steps = [line for line in lines if re.search(r"step \d+/\d+ \| reward", line)]
    assert len(steps) == STEPS, lines
    assert len(lines) <= 25, "\n".join(lines)
    assert any(f"audio-thinker dashboard --runs {run.parent}" in line for line in lines)
    starting = [line for line in lines if re.search(r" ready after [\d.]+ s$|still starting after", line)]
    assert len([line for line in starting if "ready after" in line]) == 4, lines  # a line per actor group
    quiet = [line for line in lines if line not in steps and line not in starting]
    assert not any("vllm" in line.lower() or " I " in line for line in quiet), lines
    recovered = [line for line in quiet if " W " in line and ("back in a new process" in line or "died during" in line)]
    assert len(recovered) == 3, lines
    assert not any("(raylet)" in line or "Unhandled error" in line or "Traceback" in line for line in lines), lines
    assert "A worker died or was killed" in (run / "logs" / "driver.log").read_text()
    logs = run / "logs"
    assert (logs / "driver.log").read_text().count("step ") >= STEPS
    worker_logs = list(logs.glob("rollout-worker-*.log"))
    assert worker_logs and any("vllm" in p.read_text().lower() for p in worker_logs)
    assert list(logs.glob("trainer-rank-0-*.log")) and list(logs.glob("judge-server-*.log"))
