"""The log redactor: configured secrets and bearer tokens never reach a line, in either format.

tests/lab/test_operability_lab.py checks the same on the whole log of real agents.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from agent import logs
from agent.logs import redactor

SECRET = "s3cr.T/9"
TOKEN = "eyJhbGciOiJSUzI1NiIsImtpZCI6IkFCQyJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


def test_redactor_replaces_secrets_and_tokens() -> None:
    redact = redactor([SECRET, "", "s3cr"])
    assert (
        redact(f"auth_pass {SECRET} and again{SECRET}")
        == "auth_pass <redacted> and again<redacted>"
    )
    assert redact("a prefix s3cr alone") == "a prefix <redacted> alone"
    assert redact(f"Authorization: Bearer {TOKEN}") == "Authorization: Bearer <redacted>"
    assert redact(f"bearer {TOKEN}") == "bearer <redacted>"
    assert redact(f"token={TOKEN}&x=1") == "token=<redacted>&x=1"
    assert redact("nothing secret here") == "nothing secret here"
    assert redactor([])("Bearer short") == "Bearer short", "8+ characters make a token"


@pytest.fixture(params=["text", "json"])
def captured(request: pytest.FixtureRequest) -> Iterator[tuple[str, io.StringIO]]:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    logs.setup(request.param, secrets=[SECRET])
    stream = io.StringIO()
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    try:
        yield request.param, stream
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def test_formatters_redact_messages_arguments_and_tracebacks(
    captured: tuple[str, io.StringIO],
) -> None:
    fmt, stream = captured
    log = logging.getLogger("vip-agent.test")
    log.info("keepalived.conf: Unknown keyword '%s'", SECRET)
    log.warning("GET with Authorization: Bearer %s", TOKEN)
    try:
        raise ValueError(f"bad value {SECRET}")
    except ValueError:
        log.exception("failed")
    text = stream.getvalue()
    assert SECRET not in text and TOKEN not in text
    assert text.count("<redacted>") >= 3
    lines = text.splitlines()
    if fmt == "json":
        records = [json.loads(line) for line in lines]
        assert records[0]["msg"] == "keepalived.conf: Unknown keyword '<redacted>'"
        assert "ValueError: bad value <redacted>" in records[2]["msg"]
    else:
        assert len(lines) == 3, "one line per event, the traceback included"
        assert "msg=\"keepalived.conf: Unknown keyword '<redacted>'\"" in lines[0]
