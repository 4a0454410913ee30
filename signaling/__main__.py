"""The ``omnirtc`` command: ``omnirtc serve``.

This is the entry point: it reads the settings, configures logging, builds the engine and
runs the app (on uvloop where available).  Nothing runs on import.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from omni.engines import ENGINE_NAMES, EngineConfigs, build_engine
from omni.executor import ReplicaPool
from signaling.app import create_app
from signaling.settings import Settings, SettingsError, load_settings

log = logging.getLogger("omnirtc")

DEFAULT_CONFIG = Path("configs/default.toml")


class _JsonFormatter(logging.Formatter):
    _skip = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "t": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        body.update({k: v for k, v in record.__dict__.items() if k not in self._skip})
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.logging.json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.logging.level.upper())
    logging.getLogger("aioice").setLevel(logging.WARNING)
    logging.getLogger("aiortc").setLevel(logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omnirtc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the call server")
    serve.add_argument(
        "--config", type=Path, help=f"settings file (default: {DEFAULT_CONFIG} if present)"
    )
    serve.add_argument("--host", help="address to listen on")
    serve.add_argument("--port", type=int, help="port to listen on")
    serve.add_argument("--engine", choices=ENGINE_NAMES, help="engine that answers calls")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = args.config
    if config is None and DEFAULT_CONFIG.is_file():
        config = DEFAULT_CONFIG
    try:
        settings = load_settings(
            config,
            os.environ,
            {"server.host": args.host, "server.port": args.port, "engine.name": args.engine},
        )
    except SettingsError as exc:
        sys.stderr.write(f"omnirtc: {exc}\n")
        return 2
    configure_logging(settings)
    # OpenBLAS threads spin and steal the event loop's core; media math needs none.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    runner = _run
    try:
        import uvloop
    except ImportError:
        return asyncio.run(runner(settings))
    return uvloop.run(runner(settings))


async def _run(settings: Settings) -> int:
    engine = build_engine(
        settings.engine.name,
        settings.engine.replicas,
        settings.server.max_calls,
        EngineConfigs(echo=settings.engine.echo, lite=settings.engine.lite),
    )
    pool = ReplicaPool(engine)
    try:
        app = create_app(settings, pool)
    except FileNotFoundError as exc:
        log.error("%s", exc)
        return 2
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.server.host, settings.server.port)
    try:
        await site.start()
    except OSError as exc:
        log.error(
            "cannot listen on %s:%s: %s", settings.server.host, settings.server.port, exc.strerror
        )
        await runner.cleanup()
        return 1
    host = settings.server.host
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::") else host
    port = runner.addresses[0][1] if runner.addresses else settings.server.port
    log.info("omnirtc serving engine %s: open http://%s:%s/ to call", engine.info.name, shown, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await runner.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
