"""One line per event, as key=value text or JSON; secrets never reach a line.

Log calls pass values as arguments; the formatter prints ``ts level logger msg``
(text) or an object (json).  Anything that looks like a configured secret (the VRRP
password, bearer tokens) is replaced by ``<redacted>`` before the line is written,
as a last guard behind the code never logging them on purpose.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable

from agent.settings import LogFormat

_BEARER = re.compile(r"(?i)(bearer\s+|token[=:]\s*)[A-Za-z0-9._~+/=-]{8,}")


class _Redactor:
    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "<redacted>")
        return _BEARER.sub(lambda m: m.group(1) + "<redacted>", text)


def redactor(secrets: Iterable[str]) -> Callable[[str], str]:
    """The log lines' redactor, for other text that leaves the agent (the status file)."""
    return _Redactor(secrets)


class TextFormatter(logging.Formatter):
    def __init__(self, redact: _Redactor) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        msg = record.getMessage()
        if record.exc_info:
            msg += " exc=" + repr(self.formatException(record.exc_info))
        line = f"ts={ts}.{int(record.msecs):03d}Z level={record.levelname.lower()} "
        line += f"logger={record.name} msg={json.dumps(msg)}"
        return self.redact(line)


class JsonFormatter(TextFormatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": msg,
        }
        return self.redact(json.dumps(out))


def setup(fmt: LogFormat, *, secrets: Iterable[str] = (), level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    redact = _Redactor(secrets)
    handler.setFormatter(JsonFormatter(redact) if fmt == LogFormat.JSON else TextFormatter(redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # the kubernetes client logs request bodies at debug; never let them through
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # its retries: 3 lines per failure
