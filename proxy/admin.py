"""The admin port: /healthz (liveness), /readyz (readiness), /metrics, /status. Nothing else."""
from __future__ import annotations

import json
import time

from aiohttp import web
from prometheus_client import exposition


def _json(data, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(data, default=str).encode(),
                        content_type="application/json")


def admin_app(rt) -> web.Application:
    """Routes of the admin port; any other path is 404 (the traffic port never serves these)."""

    async def healthz(request):
        # Liveness: this handler running at all proves the event loop turns. It never looks at
        # the upstream or the probes: an LLM outage must not make Kubernetes restart the pod.
        return _json({"status": "alive", "uptime_seconds": round(rt.loop.time() - rt.started_at, 3),
                      "loop_lag_seconds": round(rt.loop_lag, 4)})

    async def readyz(request):
        ok, checks = rt.readiness()
        return _json({"status": "ready" if ok else "not_ready", "checks": checks}, 200 if ok else 503)

    async def metrics(request):
        encoder, content_type = exposition.choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(rt.registry), headers={"Content-Type": content_type})

    async def status(request):
        data = rt.status()
        data["time"] = time.time()
        return _json(data)

    app = web.Application(handler_args={"max_field_size": 8190})
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    return app
