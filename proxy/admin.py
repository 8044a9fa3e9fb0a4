"""The admin port: /healthz (liveness), /readyz (readiness), /metrics, /status, POST /drain.

Unauthenticated by design (like Envoy's admin port): it binds where ``server.admin_listen`` says,
and the Kubernetes manifests fence it with a NetworkPolicy (the monitoring namespace and the
kubelet only). ``POST /drain`` changes state, so it answers only peers on the loopback interface:
in a pod that is the agent container's preStop hook.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import ipaddress
import json
import time

from aiohttp import web
from prometheus_client import exposition

from .config import redact

if TYPE_CHECKING:  # the Runtime builds this module's objects; no import cycle at run time
    from .app import Runtime


def _is_loopback(peer: str | None) -> bool:
    try:
        ip = ipaddress.ip_address((peer or "").split("%", 1)[0])
    except ValueError:
        return False
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


def admin_app(rt: "Runtime", on_drain=None) -> web.Application:
    """Routes of the admin port; any other path is 404 (the traffic port never serves these).

    ``on_drain(reason) -> dict`` starts the drain; without it there is no ``/drain``."""

    def _json(data, status: int = 200) -> web.Response:
        # every JSON answer passes the running config's secrets filter (probe errors, config summary)
        text = redact(json.dumps(data, default=str), rt.cfg.secrets)
        return web.Response(status=status, text=text, content_type="application/json")

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
        rt.records.flush()  # the exchanges that ended before this scrape are all counted in it
        return web.Response(body=encoder(rt.registry), headers={"Content-Type": content_type})

    async def status(request):
        rt.records.flush()
        data = rt.status()
        data["time"] = time.time()
        return _json(data)

    async def drain(request):
        if not _is_loopback(request.remote):
            return _json({"error": {"type": "forbidden", "message": "POST /drain is accepted from the pod itself only"}}, 403)
        return _json(on_drain("POST /drain"), 202)

    app = web.Application(handler_args={"max_field_size": 8190})
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    if on_drain is not None:
        app.router.add_post("/drain", drain)
    return app
