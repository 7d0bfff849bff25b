"""Dashboard latency (not a test): a synthetic run of 1,000 steps × 128 samples, then the time to open its run page
(target < 2 s) and the rollout browser of one step (target < 1 s), on whatever cores this machine has.

"server" is the HTTP request alone (the run page's data is its metrics endpoint); "browser" is headless
chromium from navigation until every series is on screen as a plain SVG preview ("first paint", before
plotly has loaded), until the interactive plotly charts of the first screen are drawn ("first screen"; the
others follow one per frame: "all charts") or until the page has loaded (rollout browser). "cold" is the
first request of a fresh dashboard process, which parses the files, in a browser with an empty cache
(plotly.min.js is 4.8 MB); "warm" a repeat.

    python bench/dashboard.py [--steps 1000] [--questions 16] [--group 8] [--out DIR]

(from `make bench`, or with the repository on PYTHONPATH; the browser column needs `make browser`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from audio_thinker.app.dashboard.server import create_app
from audio_thinker.app.dashboard.synthetic_run import write_synthetic_run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(runs: Path) -> tuple[uvicorn.Server, str]:
    server = uvicorn.Server(uvicorn.Config(create_app(runs), host="127.0.0.1", port=free_port(), log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{server.config.port}"


def timed_get(client: httpx.Client, url: str) -> tuple[float, int]:
    start = time.perf_counter()
    response = client.get(url)
    response.raise_for_status()
    return time.perf_counter() - start, len(response.content)


def browser_times(base: str, run_url: str, rollout_url: str) -> dict[str, float]:
    chromium = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return {}
    if chromium is None:
        return {}
    out = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(base_url=base, viewport={"width": 1400, "height": 900})
        page.goto("/static/style.css")  # the browser's own start-up is not the dashboard's
        for label in ("cold", "warm"):
            start = time.perf_counter()
            page.goto(run_url)
            page.wait_for_function("() => document.body.dataset.painted === '1'", timeout=60_000)
            out[f"run page, first paint ({label})"] = time.perf_counter() - start
            page.wait_for_function("() => document.body.dataset.ready === '1'", timeout=60_000)
            out[f"run page, first screen ({label})"] = time.perf_counter() - start
            page.wait_for_function("() => document.body.dataset.complete === '1'", timeout=60_000)
            out[f"run page, all charts ({label})"] = time.perf_counter() - start
            start = time.perf_counter()
            page.goto(rollout_url, wait_until="load")
            out[f"rollout browser ({label})"] = time.perf_counter() - start
        browser.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--questions", type=int, default=16, help="questions per step")
    parser.add_argument("--group", type=int, default=8, help="samples per question (G)")
    parser.add_argument("--out", default=None, help="folder for the synthetic run (default: a temporary one)")
    args = parser.parse_args()

    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="dashboard-bench-"))
    start = time.perf_counter()
    write_synthetic_run(root / "runs" / "bench", steps=args.steps, questions=args.questions, group=args.group)
    print(f"wrote {args.steps} steps × {args.questions * args.group} samples in {time.perf_counter() - start:.1f} s")

    step = args.steps // 2
    metrics_url, run_url = "/api/runs/bench/metrics", "/runs/bench"
    rollout_url = f"/runs/bench/rollouts?step={step}"
    rows = []
    server, base = serve(root / "runs")
    with httpx.Client(base_url=base, timeout=60) as client:
        for label in ("cold", "warm"):
            seconds, size = timed_get(client, metrics_url)
            rows.append((f"run page data ({label})", "server", seconds, size, 2.0))
            seconds, size = timed_get(client, rollout_url)
            rows.append((f"rollout browser ({label})", "server", seconds, size, 1.0))
    server.should_exit = True

    server, base = serve(root / "runs")  # a fresh process state: the browser's first visit is cold too
    for what, seconds in browser_times(base, run_url, rollout_url).items():
        rows.append((what, "browser", seconds, None, 2.0 if what.startswith("run") else 1.0))
    server.should_exit = True

    print(f"\n{'what':<36} {'measured':<9} {'seconds':>8} {'bytes':>10} {'target':>7}")
    for what, where, seconds, size, target in rows:
        ok = "ok" if seconds < target else "over"
        print(f"{what:<36} {where:<9} {seconds:>8.3f} {size or '':>10} {f'< {target:g} s':>7} {ok}")
    print(f"\n{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f} at the end")
    if not args.out:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
