"""The dashboard's FastAPI app: HTML pages, a JSON endpoint per live chart, audio clips, static files.

Everything is read from the run directories under one folder (runs.RunIndex); the app holds no other state
than the readers' offsets, small caches and the token's sessions. The guards (security.py): a Host allow-list
for a loopback server; with a token, every request needs it (bearer header, or the session cookie that a
one-time `?token=` link sets); every answer carries a CSP with a per-response nonce, nosniff and frame headers.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection
from pathlib import Path
from typing import Annotated

import plotly
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response

from audio_thinker.app.dashboard import charts, pages, prometheus, rollouts
from audio_thinker.app.dashboard.runs import AudioRefused, Run, RunIndex
from audio_thinker.app.dashboard.security import Sessions, host_name, secure_headers

STATIC = Path(__file__).parent / "static"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
MAX_POINTS = 1000
POLL_MS = 2000


def create_app(
    runs_dir: str | Path,
    token: str | None = None,
    stale_after: float = 600.0,
    allowed_hosts: Collection[str] | None = None,
) -> FastAPI:
    """The app over the runs under `runs_dir`; `token`: required on every request (security.py);
    `allowed_hosts`: the Host names served (the CLI gives the loopback names to a loopback server)."""
    index = RunIndex(runs_dir, stale_after=stale_after)
    app = FastAPI(title="audio-thinker dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.index = index
    sessions = app.state.sessions = Sessions(token) if token else None

    @app.middleware("http")
    async def guard(request: Request, call_next):
        nonce = secrets.token_urlsafe(16)
        if allowed_hosts is not None and host_name(request.headers.get("host", "")) not in allowed_hosts:
            response: Response = PlainTextResponse("this dashboard answers only to its loopback host names", 421)
        elif sessions is not None and (login := sessions.login(request)) is not None:
            response = login
        elif sessions is not None and not sessions.valid(request):
            response = PlainTextResponse("a token is required (Authorization: Bearer, or a one-time ?token= link)", 401)
        else:
            reset = pages.NONCE.set(nonce)
            try:
                response = await call_next(request)
            finally:
                pages.NONCE.reset(reset)
        return secure_headers(response, nonce)

    if sessions is not None:

        @app.post("/api/link")
        def new_link():
            """A new one-time link (the bearer token or a session was checked by the guard)."""
            return {"link": f"/?token={sessions.mint_link()}"}

    def run_or_404(name: str) -> Run:
        run = index.get(name)
        if run is None:
            raise HTTPException(404, f"no run {name!r}")
        return run

    @app.get("/", response_class=HTMLResponse)
    def runs_page():
        return pages.render("runs.html", runs=[r.summary() for r in index.scan()], root=str(index.root))

    @app.get("/api/runs")
    def runs_api():
        return [r.summary() for r in index.scan()]

    @app.get("/runs/{name}", response_class=HTMLResponse)
    def run_page(name: str):
        run = run_or_404(name)
        return pages.render("run.html", run=run.summary(), config=run.config, poll_ms=POLL_MS)

    @app.get("/api/runs/{name}/metrics")
    def metrics_api(name: str, since: int = 0, max_points: Annotated[int, Query(ge=10, le=100_000)] = MAX_POINTS):
        """Points after step `since` (0: the whole run, downsampled); a client that sees `generation`
        change (the run was resumed and its file rewritten) asks again from 0."""
        run = run_or_404(name)
        state, message = run.status()
        m = run.metrics
        return JSONResponse(
            {
                "state": state,
                "message": message,
                "warnings": run.warnings(),
                "generation": m.generation,
                "last_step": run.last_step,
                "total_steps": run.total_steps,
                "panels": charts.panels(m.keys),
                "series": charts.payload(m, since, max_points),
            }
        )

    @app.get("/compare", response_class=HTMLResponse)
    def compare_page(run: Annotated[list[str], Query()] = ()):
        chosen = [r.summary() for r in (run_or_404(name) for name in dict.fromkeys(run))]
        return pages.render("compare.html", runs=chosen)

    @app.get("/runs/{name}/rollouts", response_class=HTMLResponse)
    def rollouts_page(request: Request, name: str, step: int | None = None):
        run = run_or_404(name)
        steps = run.dump_steps()
        if step is None and steps:
            step = steps[-1]
        dump = run.dump(step) if step is not None else None
        rows = dump.rows if dump else []
        filters = rollouts.Filters.from_query(request.query_params)
        groups = rollouts.group_samples(rows, filters)
        return pages.render(
            "rollouts.html",
            run=run.summary(),
            steps=steps,
            step=step,
            dump=dump,
            groups=groups,
            shown=sum(len(g["samples"]) for g in groups),
            total=len(rows),
            filters=filters,
            params=dict(request.query_params),
            facets=rollouts.facets(rows),
            histograms=rollouts.histogram_data(rows),
            modes=rollouts.MODES,
            scores=rollouts.SCORES,
            sorts=rollouts.SORTS,
            terms=rollouts.TERMS,
        )

    @app.get("/runs/{name}/questions/{question_id}", response_class=HTMLResponse)
    def question_page(name: str, question_id: str):
        run = run_or_404(name)
        history = run.question_history(question_id)
        return pages.render("question.html", run=run.summary(), question_id=question_id, history=history)

    @app.get("/runs/{name}/audio")
    def audio(name: str, path: str):
        """One clip of the run (Range requests answered with 206 by FileResponse)."""
        run = run_or_404(name)
        try:
            file, media_type = run.audio_file(path)
        except AudioRefused as exc:
            raise HTTPException(exc.status, str(exc)) from None
        return FileResponse(file, media_type=media_type)

    @app.get("/runs/{name}/timeline.json")
    def timeline(name: str):
        """The run's Chrome trace of step phases (app/train/timeline.py), for Perfetto or chrome://tracing."""
        file = run_or_404(name).path / "timeline.json"
        if not file.is_file():
            raise HTTPException(404, f"run {name!r} has no timeline.json (written from its first finished step)")
        return FileResponse(file, media_type="application/json", filename=f"{name}-timeline.json")

    @app.get("/metrics")
    def metrics():
        """Prometheus: the last logged step of every run (docs/dashboard.md, deploy/grafana)."""
        return Response(prometheus.exposition(index), media_type=prometheus.CONTENT_TYPE)

    @app.get("/static/plotly.min.js")
    def plotly_js():
        return FileResponse(PLOTLY_JS, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    @app.get("/static/{name}")
    def static(name: str):
        types = {".js": "text/javascript", ".css": "text/css"}
        file = STATIC / name
        if "/" in name or file.suffix not in types or not file.is_file():
            raise HTTPException(404)
        return FileResponse(file, media_type=types[file.suffix])

    return app
