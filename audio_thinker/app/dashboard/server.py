"""The dashboard's FastAPI app: HTML pages, a JSON endpoint per live chart, audio clips, static files.

Everything is read from the run directories under one folder (runs.RunIndex); the app holds no other state
than the readers' offsets and small caches. With a token, every request needs it (bearer header, or the
cookie that a one-time `?token=` link sets).
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Annotated

import plotly
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response

from audio_thinker.app.dashboard import charts, pages, prometheus, rollouts
from audio_thinker.app.dashboard.runs import AudioRefused, Run, RunIndex

STATIC = Path(__file__).parent / "static"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
COOKIE = "audio_thinker_dashboard"
MAX_POINTS = 1000
POLL_MS = 2000


def _token_ok(request: Request, token: str) -> bool:
    header = request.headers.get("authorization", "")
    offered = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(COOKIE, "")
    return bool(offered) and hmac.compare_digest(offered.encode(), token.encode())


def create_app(runs_dir: str | Path, token: str | None = None, stale_after: float = 600.0) -> FastAPI:
    index = RunIndex(runs_dir, stale_after=stale_after)
    app = FastAPI(title="audio-thinker dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.index = index

    if token:

        @app.middleware("http")
        async def require_token(request: Request, call_next):
            offered = request.query_params.get("token")
            if offered is not None and hmac.compare_digest(offered.encode(), token.encode()):
                rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
                target = request.url.path + ("?" + pages.query(dict(rest)) if rest else "")
                response = RedirectResponse(target, status_code=303)
                response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
                return response
            if not _token_ok(request, token):
                return PlainTextResponse("a token is required (Authorization: Bearer, or a ?token= link)", 401)
            return await call_next(request)

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
