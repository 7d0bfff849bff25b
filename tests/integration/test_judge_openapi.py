"""schemathesis against the judge's own OpenAPI spec: a live server (uvicorn on 127.0.0.1, the tiny Qwen3 judge,
a key) gets requests generated from the spec for every route; no answer may be a 5xx, and every answer must be
documented (status code, content type, body schema)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from reward_server.app import ServerSettings
from reward_server.backends import TransformersBackend
from reward_server.cli import ServerThread, build_server
from reward_server.client import JudgeClient

KEY = "openapi-key"


@pytest.fixture(scope="module")
def judge_url(judge_path):
    settings = ServerSettings(api_keys=frozenset({KEY}), max_items=4, max_text_chars=2000, max_batch_size=8)
    thread = ServerThread(build_server(lambda: TransformersBackend(judge_path, device="cpu"), settings, port=0))
    url = thread.start()
    JudgeClient(url).wait_ready(120)
    yield url
    thread.stop(60)


def test_the_judge_answers_every_generated_request_as_its_spec_says(judge_url):
    schema = schemathesis.openapi.from_url(f"{judge_url}/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/judge", "POST /v1/rewards", "POST /get_reward"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def answers_as_specified(case):
            case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"}, checks=checks)

        answers_as_specified()
