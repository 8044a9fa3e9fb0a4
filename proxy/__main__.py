# The sidecar's command line (the image runs it under -OO, so --help reads no docstring)
from __future__ import annotations

import argparse
import os
import sys


def _import_aiohttp_without_its_ca_copies() -> None:
    """Import aiohttp with no CA file for OpenSSL to read, then put the environment back.

    aiohttp builds two client TLS contexts when it is imported (``aiohttp.connector``), and each
    parses the whole system CA bundle: 2 MiB of the sidecar's idle RSS. The sidecar never uses
    them: the upstream pool, the run checks and the WebSocket relay share the pool's own context
    (``proxy/upstream.py``), and probes speak plain HTTP to the traffic port. Pointed at an empty
    file, OpenSSL keeps only its hashed CA directory for those two contexts, read certificate by
    certificate on demand. Every context the sidecar makes afterwards reads ``SSL_CERT_FILE`` (or
    the bundle) as before: a custom CA is trusted exactly as it was.
    """
    saved = os.environ.get("SSL_CERT_FILE")
    os.environ["SSL_CERT_FILE"] = os.devnull
    try:
        import aiohttp  # noqa: F401
    finally:
        if saved is None:
            del os.environ["SSL_CERT_FILE"]
        else:
            os.environ["SSL_CERT_FILE"] = saved


_import_aiohttp_without_its_ca_copies()

from . import config as C  # noqa: E402

DESCRIPTION = "The LangGraph sidecar proxy: python -m proxy --config PATH [--check]"
EPILOG = """\
default ports (server.listen / server.admin_listen in the config):
  8080  traffic: clients, the Service
  9090  admin: /healthz /readyz /metrics /status, POST /drain (from the pod itself only)

signals:
  SIGTERM, SIGINT  drain: /readyz answers 503 and answers say Connection: close at once, new
                   connections are accepted for server.drain_delay, then in-flight requests and
                   streams may finish within server.shutdown_grace; exit 0.
                   A second SIGTERM/SIGINT skips what is left of both waits.
  SIGHUP           reload the config (so does a change of the file on disk); an invalid new
                   config is rejected with the same messages as --check and the old one stays.

exit codes:
  0  stopped after a drain, or --check found the config valid (warnings allowed)
  1  the config is invalid (every problem is listed by key path)
  2  usage error: no config given
  3  a listen address cannot be bound (in use, not local, no permission)

config reference: config.example.yaml in the repository documents every key.
"""


def _check_report(path: str, cfg: C.Config) -> str:
    from .routes import RouteTable
    total, yours = len(RouteTable(cfg).routes), len(cfg.routes)
    probes = len(cfg.probes)
    lines = [f"{path}: OK ({total} route{'s' * (total != 1)} ({yours} yours), "
             f"{probes} probe{'s' * (probes != 1)})"]
    lines += [f"warning: {w}" for w in C.capacity_warnings(cfg)]
    return C.redact("\n".join(lines), cfg.secrets)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m proxy", description=DESCRIPTION, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=os.environ.get("PROXY_CONFIG"),
                    help="YAML config file (default: $PROXY_CONFIG)")
    ap.add_argument("--check", action="store_true",
                    help="validate the config, print warnings about settings that contradict each other, and exit")
    ap.add_argument("--ready-file", help=argparse.SUPPRESS)  # tests: write the bound ports here
    args = ap.parse_args(argv)
    if not args.config:
        print("error: no config: pass --config PATH or set PROXY_CONFIG", file=sys.stderr)
        return 2
    try:
        cfg = C.load(args.config)
    except C.ConfigError as e:
        print(f"{args.config}: invalid config", file=sys.stderr)
        for p in e.problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    if args.check:
        print(_check_report(args.config, cfg))
        return 0

    from . import logs
    logs.setup(cfg.logging.level, cfg.logging.format, cfg.secrets)
    import uvloop

    from . import gcpolicy
    from .lifecycle import Lifecycle

    async def run() -> int:
        gcpolicy.setup()
        return await Lifecycle(cfg, args.config, args.ready_file).run()

    try:
        return uvloop.run(run())
    except C.BindError as e:
        # one line, no traceback: the usual cause is another process on the port (9090 is Prometheus's)
        print(f"error: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
