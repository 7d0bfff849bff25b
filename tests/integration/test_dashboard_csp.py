"""The dashboard's Content-Security-Policy in a real browser (Debian's chromium driven by Playwright) on a
synthetic run: every page draws all its charts and the step menu of the rollout browser still works, with no CSP
violation reported (plotly, the page scripts and their nonces all pass the policy); a script injected into the
page without the nonce does not run."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
import uvicorn
from playwright import sync_api

from audio_thinker.app.dashboard.security import LOOPBACK_NAMES
from audio_thinker.app.dashboard.server import create_app
from audio_thinker.app.dashboard.synthetic_run import write_synthetic_run
from conftest import free_port

CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    write_synthetic_run(runs / "demo", steps=6, total_steps=10, questions=2, group=4)
    server = uvicorn.Server(uvicorn.Config(create_app(runs, allowed_hosts=LOOPBACK_NAMES), host="127.0.0.1",
                                           port=free_port(), log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the dashboard did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{server.config.port}"
    server.should_exit = True
    thread.join(timeout=30)


def test_pages_work_under_the_policy_and_an_injected_script_does_not_run(dashboard):
    assert CHROMIUM is not None, "Debian's chromium is not installed: run `make browser`"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_context(base_url=dashboard).new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        for path in ("/runs/demo", "/compare?run=demo", "/runs/demo/questions/q0000"):
            page.goto(path)
            page.wait_for_function("() => document.body.dataset.complete === '1'", timeout=60_000)
            assert page.locator(".js-plotly-plot").count() > 0, path
        page.goto("/runs/demo/rollouts?step=6")
        with page.expect_navigation():
            page.select_option("select[name=step]", "3")  # the step menu's script (no inline handler)
        assert "step=3" in page.url
        page.evaluate("""() => { const s = document.createElement('script'); s.textContent = 'window.pwned = 1';
                                 document.body.appendChild(s); }""")  # fmt: skip
        assert page.evaluate("window.pwned") is None
        browser.close()
    violations = [m for m in console if "Content Security Policy" in m]
    assert len(violations) == 1 and "inline script" in violations[0].lower(), console  # the injected one only
