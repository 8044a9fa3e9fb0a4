"""CLI: ``python -m proxy --config PATH [--check]`` (or PROXY_CONFIG=PATH)."""
from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys

from . import config as C


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m proxy", description=__doc__)
    ap.add_argument("--config", default=os.environ.get("PROXY_CONFIG"),
                    help="YAML config file (default: $PROXY_CONFIG)")
    ap.add_argument("--check", action="store_true", help="validate the config and exit")
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
        print(f"{args.config}: OK ({len(cfg.routes)} routes, {len(cfg.probes)} probes)")
        return 0

    from . import logs
    logs.setup(cfg.logging.level, cfg.logging.format)
    import uvloop

    from .lifecycle import Lifecycle

    async def run() -> int:
        gc.collect()
        gc.freeze()  # start-up objects never need scanning again: cheaper GC pauses on the hot path
        return await Lifecycle(cfg, args.config, args.ready_file).run()

    return uvloop.run(run())


if __name__ == "__main__":
    sys.exit(main())
