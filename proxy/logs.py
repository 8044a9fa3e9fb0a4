"""Process logging: one JSON object per line on stderr (or plain text), never secrets."""
from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", ...fields}``; fields come from ``extra={"fields": {...}}``."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": round(record.created, 3), "level": record.levelname.lower(),
               "logger": record.name, "message": record.getMessage()}
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        extra = " " + " ".join(f"{k}={v}" for k, v in fields.items()) if fields else ""
        s = f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(record.created))} {record.levelname} {record.name}: {record.getMessage()}{extra}"
        if record.exc_info:
            s += "\n" + self.formatException(record.exc_info)
        return s


def setup(level: str, fmt: str) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp logs bad client requests at warning/error with tracebacks: keep them, but terse
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
