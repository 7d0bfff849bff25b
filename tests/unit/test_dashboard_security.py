"""The dashboard's guards (audio_thinker/app/dashboard/security.py) through its real app: the loopback Host
allow-list, the token's sessions and one-time links, redirects that stay on the site, one symlink rule for listing
and lookup, malformed dump rows, and the headers of every answer."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient

from audio_thinker.app.dashboard.security import COOKIE, LOOPBACK_NAMES, SESSION_S, host_name, same_site_path
from audio_thinker.app.dashboard.server import create_app
from audio_thinker.app.dashboard.synthetic_run import write_synthetic_run


@pytest.fixture
def run_dir(tmp_path):
    return write_synthetic_run(tmp_path / "runs" / "demo", steps=5, total_steps=10, questions=2, group=8)


def test_a_loopback_server_answers_only_its_own_host_names(run_dir):
    app = create_app(run_dir.parent, allowed_hosts=LOOPBACK_NAMES)
    for host in ("127.0.0.1:8377", "localhost", "[::1]:8377", "LOCALHOST:1"):
        assert TestClient(app, base_url=f"http://{host}").get("/").status_code == 200, host
    for host in ("evil.example", "evil.example:8377", "127.0.0.1.evil.example", "attacker.localhost.example"):
        assert TestClient(app, base_url=f"http://{host}").get("/api/runs").status_code == 421, host
    assert (host_name("[::1]:80"), host_name("Example.COM:80"), host_name("::1")) == ("::1", "example.com", "::1")


def test_token_sessions_and_one_time_links(run_dir):
    app = create_app(run_dir.parent, token="s3cret")
    client = TestClient(app)
    assert client.get("/").status_code == 401
    assert client.get("/?token=s3cret").status_code == 401  # the token itself is no link
    assert client.get("/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    link = app.state.sessions.mint_link()
    answer = client.get(f"/runs/demo?token={link}&step=2", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/runs/demo?step=2"
    cookie = answer.headers["set-cookie"]
    sid = re.match(rf"{COOKIE}=([^;]+)", cookie).group(1)
    assert sid not in ("s3cret", link) and len(sid) >= 40
    for part in (f"max-age={SESSION_S}", "httponly", "samesite=strict"):
        assert part in cookie.lower()
    assert "secure" not in cookie.lower()  # plain http here; behind TLS the cookie is Secure
    assert client.get("/runs/demo").status_code == 200  # the session
    stranger = TestClient(app)
    assert stranger.get(f"/?token={link}").status_code == 401  # a link works once
    assert stranger.get("/", cookies={COOKIE: "forged"}).status_code == 401
    assert stranger.post("/api/link").status_code == 401
    fresh = client.post("/api/link").json()["link"]
    assert stranger.get(fresh).status_code == 200  # followed: redirected, session set
    tls = TestClient(app, base_url="https://127.0.0.1")
    assert "secure" in tls.get(f"/?token={app.state.sessions.mint_link()}", follow_redirects=False).headers[
        "set-cookie"].lower()  # fmt: skip


def test_redirects_stay_on_the_site(run_dir):
    app = create_app(run_dir.parent, token="t")
    for path in ("/%2F%2Fevil.example", "//evil.example", "/%5Cevil.example", "/\\\\evil.example"):
        link = app.state.sessions.mint_link()
        answer = TestClient(app).get(f"{path}?token={link}", follow_redirects=False)
        location = answer.headers["location"]
        assert answer.status_code == 303 and location.startswith("/") and not location.startswith(("//", "/\\")), path
    assert same_site_path("//evil.example/x") == "/evil.example/x"


def test_one_symlink_rule_for_listing_and_lookup(run_dir, tmp_path):
    outside = write_synthetic_run(tmp_path / "elsewhere" / "secret", steps=1, total_steps=2, questions=1, group=2)
    (run_dir.parent / "linked").symlink_to(outside, target_is_directory=True)
    (run_dir.parent / "latest").symlink_to(run_dir, target_is_directory=True)  # a link to a run inside: fine
    client = TestClient(create_app(run_dir.parent))
    assert sorted(r["name"] for r in client.get("/api/runs").json()) == ["demo", "latest"]
    assert client.get("/runs/linked").status_code == 404  # neither after a listing
    assert client.get("/runs/linked/rollouts").status_code == 404


def test_malformed_rows_and_paths_are_4xx_or_warnings_never_500(run_dir):
    client = TestClient(create_app(run_dir.parent), raise_server_exceptions=False)
    dump = run_dir / "rollouts" / "step_000005.jsonl"
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    rows[0]["choices"], rows[1]["advantage"], rows[2]["question_id"] = 5, "high", ["q"]
    rows.append([1, 2])
    dump.write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = client.get("/runs/demo/rollouts?step=5")
    assert page.status_code == 200 and "3 row(s) with a field of the wrong type skipped" in page.text
    assert "1 malformed line(s) skipped" in page.text  # not an object
    assert page.text.count('class="sample ') == 13
    assert client.get("/runs/demo/questions/q0000").status_code == 200
    assert client.get("/runs/demo/audio", params={"path": "x\0.wav"}).status_code == 400
    assert client.get("/runs/demo/audio", params={"path": "n" * 5000 + ".wav"}).status_code == 400


def test_every_answer_carries_the_security_headers_and_scripts_their_nonce(run_dir):
    client = TestClient(create_app(run_dir.parent))
    for path in ("/", "/runs/demo", "/runs/demo/rollouts", "/api/runs", "/static/dashboard.js", "/nope"):
        answer = client.get(path)
        assert answer.headers["x-content-type-options"] == "nosniff", path
        assert answer.headers["x-frame-options"] == "DENY", path
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"], path
    page = client.get("/runs/demo")
    nonce = re.search(r"'nonce-([^']+)'", page.headers["content-security-policy"]).group(1)
    scripts = re.findall(r"<script(?: nonce=\"([^\"]*)\")?>", page.text)  # inline scripts
    assert scripts and all(s == nonce for s in scripts)
    assert nonce not in client.get("/runs/demo").text  # a new nonce per answer
    assert "onchange=" not in client.get("/runs/demo/rollouts").text  # no inline handlers
