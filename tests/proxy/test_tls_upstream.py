"""An https:// upstream: the sidecar verifies it against the CA it is given (``SSL_CERT_FILE``),
for plain requests, streams and WebSockets alike, and refuses one it cannot verify.

Also the memory trick behind it: aiohttp is imported without reading the CA bundle into the two
client contexts it builds at import (proxy/__main__.py), and the environment is put back for
every context the sidecar makes itself.
"""
from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys

import pytest

from proxy_harness import ROOT, FaultUpstream, metric, scrape

pytestmark = pytest.mark.skipif(subprocess.run(["which", "openssl"], capture_output=True).returncode != 0,
                                reason="needs the openssl command line tool")


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A private CA and a server certificate for 127.0.0.1 it signed (EC keys: fast)."""
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=sidecar test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign", cwd=d)
    _openssl("req", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "srv.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    return d


@pytest.fixture
async def tls_upstream(pki):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki / "srv.pem", pki / "srv.key")
    up = await FaultUpstream().start(ssl_context=ctx)
    try:
        yield up
    finally:
        await up.stop()


async def test_an_https_upstream_is_verified_against_the_given_ca(pki, tls_upstream, make_proxy, session):
    p = make_proxy(tls_upstream.url, env={"SSL_CERT_FILE": str(pki / "ca.pem")})
    async with session.get(p.url + "/anything") as r:
        assert r.status == 200
        await r.read()
    async with session.get(p.url + "/sse?events=3&interval=0.01",
                           headers={"Accept": "text/event-stream"}) as r:
        assert r.status == 200
        body = await r.read()
    assert body.count(b"event: values") == 3
    # the WebSocket relay uses the pool's context too (wss://), not aiohttp's own
    async with session.ws_connect(p.url + "/threads/t1/stream/events") as ws:
        await ws.send_str("hello")
        assert (await ws.receive()).data == "echo:hello"
    assert [s["path"] for s in tls_upstream.seen][:2] == ["/anything", "/sse?events=3&interval=0.01"]


async def test_an_upstream_the_sidecar_cannot_verify_is_refused(tls_upstream, make_proxy, session):
    p = make_proxy(tls_upstream.url)  # the system CAs only: the private CA is unknown
    async with session.get(p.url + "/anything") as r:
        assert r.status == 502
        err = (await r.json())["error"]
        assert err["type"] == "upstream_unreachable" and "CERTIFICATE_VERIFY_FAILED" in err["message"]
    with pytest.raises(Exception) as e:
        await session.ws_connect(p.url + "/threads/t1/stream/events")
    assert getattr(e.value, "status", None) == 502
    assert tls_upstream.seen == []  # nothing reached the upstream over an unverified connection
    s = await scrape(p.admin)
    # a connect failure, as the classifier counts any (each of the 2 attempts the retry allows)
    assert metric(s, "sidecar_upstream_errors_total", route="other", kind="connect") == 2
    assert metric(s, "sidecar_upstream_errors_total", route="thread_stream_events", kind="connect") == 2
    async with session.get(p.url + "/again") as r:  # the sidecar still answers (its breaker may be open now)
        assert r.status in (502, 503)
        assert (await r.json())["error"]["type"] in ("upstream_unreachable", "circuit_open")


def test_aiohttp_is_imported_without_the_ca_bundle_and_the_environment_is_restored(pki):
    """The two contexts aiohttp builds at import hold no CA (2 MiB of idle RSS saved); a context
    the sidecar makes afterwards still reads the CA file it is given."""
    code = ("import json, os, ssl, proxy.__main__; from aiohttp import connector as c; "
            "print(json.dumps([c._SSL_CONTEXT_VERIFIED.cert_store_stats()['x509_ca'], "
            "c._SSL_CONTEXT_UNVERIFIED.cert_store_stats()['x509_ca'], os.environ.get('SSL_CERT_FILE'), "
            "ssl.create_default_context().cert_store_stats()['x509_ca']]))")
    env = dict(os.environ, SSL_CERT_FILE=str(pki / "ca.pem"))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [0, 0, str(pki / "ca.pem"), 1]
    env.pop("SSL_CERT_FILE")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    aiohttp_verified, aiohttp_unverified, cert_file, ours = json.loads(out.stdout)
    assert (aiohttp_verified, aiohttp_unverified, cert_file) == (0, 0, None)
    assert ours > 10  # the system bundle, as any Python program reads it
