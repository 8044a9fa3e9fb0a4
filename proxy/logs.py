"""Process logging: one JSON object per line on stderr (or plain text), never secrets.

Every line passes through :func:`config.redact` with the running config's secrets (values from
``${VAR}``, URL userinfo, probe query strings and header values), whatever logger wrote it and
whatever a traceback contains. :func:`setup` is called again on every reload, so a reload switches
the format and the secrets of every logger at once.
"""
from __future__ import annotations

import json
import logging
import sys
import time

from .config import redact


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", ...fields}``; fields come from ``extra={"fields": {...}}``."""

    def __init__(self, secrets: frozenset[str] = frozenset()):
        super().__init__()
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": round(record.created, 3), "level": record.levelname.lower(),
               "logger": record.name, "message": record.getMessage()}
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(out, default=str), self.secrets)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...`` for a terminal."""

    def __init__(self, secrets: frozenset[str] = frozenset()):
        super().__init__()
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        extra = " " + " ".join(f"{k}={v}" for k, v in fields.items()) if fields else ""
        s = f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(record.created))} {record.levelname} {record.name}: {record.getMessage()}{extra}"
        if record.exc_info:
            s += "\n" + self.formatException(record.exc_info)
        return redact(s, self.secrets)


def setup(level: str, fmt: str, secrets: frozenset[str] = frozenset()) -> None:
    """(Re)configure the root logger: level, format and the secrets to redact, for every logger."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(secrets) if fmt == "json" else TextFormatter(secrets))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp logs bad client requests at warning/error with tracebacks: keep them, but terse
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
