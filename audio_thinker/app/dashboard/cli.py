"""`audio-thinker dashboard`: its parser (registered by audio_thinker/app/cli/main.py) and the command.

Loopback by default; any other host needs a token file, else the command refuses to start, because the
pages show model output and serve the training audio.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from audio_thinker.core.net import bind_error, is_loopback

DEFAULT_PORT = 8377  # neither Ray's dashboard (8265) nor TensorBoard (6006)


def read_token(path: str | None) -> str | None:
    """The token in the file (first non-empty line), None without a file; ValueError when empty."""
    if path is None:
        return None
    lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} holds no token")
    return lines[0]


def check_args(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(token, error): the one-line error names what to change."""
    try:
        token = read_token(args.token_file)
    except (OSError, ValueError) as exc:
        return None, f"cannot read --token-file: {exc}"
    if not is_loopback(args.host) and token is None:
        return None, f"--host {args.host} is not loopback: pass --token-file FILE (or bind to 127.0.0.1)"
    if not Path(args.runs).is_dir():
        return None, f"--runs {args.runs} is not a folder"
    if not 0 < args.port < 65536:
        return None, f"--port {args.port}: expected 1..65535"
    if args.stale_after <= 0:
        return None, f"--stale-after {args.stale_after:g}: expected seconds > 0"
    error = bind_error(args.host, args.port)
    if error:
        return None, f"--port {args.port}: cannot listen on {args.host}:{args.port} ({error}): choose another --port"
    return token, None


def run_dashboard(args: argparse.Namespace) -> int:
    token, error = check_args(args)
    if error:
        print(f"audio-thinker dashboard: {error}", file=sys.stderr)
        return 2
    import uvicorn  # the web stack: loaded only when this command serves

    from audio_thinker.app.dashboard.security import LOOPBACK_NAMES  # (the same)
    from audio_thinker.app.dashboard.server import create_app  # (the same)

    hosts = LOOPBACK_NAMES if is_loopback(args.host) else None  # a loopback server answers its own names only
    app = create_app(args.runs, token=token, stale_after=args.stale_after, allowed_hosts=hosts)
    link = f"?token={app.state.sessions.mint_link()}  (a one-time link: POST /api/link for another)" if token else ""
    print(f"dashboard: http://{args.host}:{args.port}/{link}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def add_dashboard_parser(subparsers, parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "dashboard",
        parents=list(parents),
        help="web dashboard of run directories: live curves, rollout browser with audio (docs/dashboard.md)",
        description="Reads the run directories under --runs (running, finished or copied runs alike).",
    )
    p.add_argument("--runs", default="runs", help="folder holding one directory per run (default: runs)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1; others need --token-file)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    p.add_argument(
        "--token-file",
        default=None,
        help="file whose first line is the access token (default: none; required for a non-loopback --host)",
    )
    p.add_argument(
        "--stale-after",
        type=float,
        default=600.0,
        help="seconds without new output after which an unfinished run shows as stale (default: 600)",
    )
    p.set_defaults(func=run_dashboard)
    return p
