# SPDX-License-Identifier: MIT
"""``fastmta serve [--config FILE]``: run the MTA on uvloop until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from fastmta.commands import add_config_arg, load_checked_or_exit


def main(argv: list[str]) -> int:
    # Until the server's own handlers are in, a SIGHUP (a reload request) must not take
    # its default action and kill the process; the configuration is read after this.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    ap = argparse.ArgumentParser(prog="fastmta serve", description="Run the MTA.")
    add_config_arg(ap)
    args = ap.parse_args(argv)
    from fastmta.config import ConfigError
    from fastmta.node import supervisor

    worker = supervisor.worker_identity()
    cfg = load_checked_or_exit(args.config, warn=worker is None)  # the same checks as check-config
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="fastmta: %(name)s: %(message)s")
    if worker is None and cfg.server.workers > 1:
        try:
            return supervisor.Supervisor(cfg, args.config).run()
        except ConfigError as e:  # an address in use
            print(f"fastmta serve: cannot start: {e}", file=sys.stderr)
            return 2
        except OSError as e:
            print(f"fastmta serve: cannot start: {e}", file=sys.stderr)
            return 1
    if worker is not None:
        supervisor.prepare_worker_metrics()

    import uvloop

    from fastmta.node.server import Server
    from fastmta.node.worker import WorkerServer
    from fastmta.smtp.auth import AuthConfigError
    from fastmta.spool.shards import adopt_orphans

    # The GIL: the loop shares the process with the metrics exporter and the AUTH
    # hashing threads; neither may keep it waiting for the default 5 ms slice.
    sys.setswitchinterval(0.0005)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    async def run() -> int:
        if worker is not None:
            return await WorkerServer(cfg, args.config, *worker).run()
        adopt_orphans(cfg.spool, 1)  # mail left in <path>/<n>/ by an earlier workers = N
        return await Server(cfg, args.config).run()

    try:
        return asyncio.run(run())
    except (ConfigError, AuthConfigError) as e:
        for line in str(e).splitlines():
            print(line, file=sys.stderr)
        return 2
    except OSError as e:
        print(f"fastmta serve: cannot start: {e}", file=sys.stderr)
        return 1
