"""The ``omnirtc`` command: ``omnirtc serve``.

This is the entry point: it reads the settings, configures logging, builds the engine and
runs the app (on uvloop where available).  Nothing runs on import.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from omni.api import Engine, EngineUnavailable
from omni.engines import ENGINE_NAMES, build_engine
from omni.pool import ReplicaPool
from realtime.patches import PatchedVersionError
from signaling.app import create_app
from signaling.app_keys import POOL
from signaling.cluster.config import Role
from signaling.cluster.gateway import create_gateway_app
from signaling.cluster.processes import supervise
from signaling.cluster.registry import RedisRegistry
from signaling.cluster.worker import ClusterWorker
from signaling.gc_policy import GcPauses, freeze_when_ready
from signaling.http_server import GuardedAppRunner, HttpLimits, fit_to_open_files
from signaling.logctx import CallIdFilter
from signaling.metrics import METRICS
from signaling.settings import Settings, SettingsError, load_settings
from signaling.tls import TlsError, machine_names, self_signed, self_signed_context, server_context

log = logging.getLogger("omnirtc")

DEFAULT_CONFIG = Path("configs/default.toml")


class _JsonFormatter(logging.Formatter):
    _skip = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "call_tag"}

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
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s%(call_tag)s: %(message)s")
        )
    handler.addFilter(CallIdFilter())  # the call id on every line written for a call
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.logging.level.upper())
    logging.getLogger("aioice").setLevel(logging.WARNING)
    logging.getLogger("aiortc").setLevel(logging.WARNING)
    # The llamacpp engine talks to its servers twice a second per call: no line per request.
    logging.getLogger("httpx").setLevel(logging.WARNING)


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
    serve.add_argument(
        "--role",
        choices=[r.value for r in Role],
        help="single (default): one process does everything; gateway: routes offers to "
        "workers; worker: serves media and engines for a gateway (both need Redis)",
    )
    serve.add_argument("--redis-url", help="Redis of the cluster (gateway and worker roles)")
    serve.add_argument(
        "--processes", type=int, help="worker processes to start on this machine (workers)"
    )
    serve.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate (chain) file")
    serve.add_argument("--tls-key", help="the PEM private key of --tls-cert")
    serve.add_argument(
        "--tls-self-signed",
        action="store_const",
        const=True,
        help="serve HTTPS with a certificate made at start for this machine",
    )
    call = commands.add_parser(
        "call",
        help="call a server: say a sound file (or talk), print the events, keep the answer",
    )
    from omnirtc_client.cli import add_arguments

    add_arguments(call)
    replay = commands.add_parser(
        "replay",
        help="run a recorded audio or video file through an engine, offline, unit by unit",
        description="Writes OUTPUT (.wav, .mp4 or .mkv: the input with the model's speech mixed "
        "in, and its text as subtitles), OUTPUT.json (every unit) and OUTPUT.srt.",
    )
    replay.add_argument("input", type=Path, help="audio or video file (anything FFmpeg reads)")
    replay.add_argument(
        "-o", "--output", type=Path, required=True, help="output .wav, .mp4 or .mkv"
    )
    replay.add_argument("--engine", choices=ENGINE_NAMES, help="engine to replay through")
    replay.add_argument("--config", type=Path, help=f"settings file (default: {DEFAULT_CONFIG})")
    replay.add_argument("--instructions", help="system prompt for engines that take one")
    replay.add_argument("--language", choices=("en", "zh"), default="en")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "call":
        # A client: no server settings; warnings only, on stderr (stdout carries events).
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        from omnirtc_client.cli import run

        return asyncio.run(run(args))
    config = args.config
    if config is None and DEFAULT_CONFIG.is_file():
        config = DEFAULT_CONFIG
    overrides: dict[str, Any] = {"engine.name": args.engine}
    if args.command == "serve":
        overrides.update(
            {
                "server.host": args.host,
                "server.port": args.port,
                "server.tls_cert": args.tls_cert,
                "server.tls_key": args.tls_key,
                "server.tls_self_signed": args.tls_self_signed,
                "cluster.role": args.role,
                "cluster.redis_url": args.redis_url,
                "cluster.processes": args.processes,
            }
        )
    try:
        settings = load_settings(config, os.environ, overrides)
    except SettingsError as exc:
        sys.stderr.write(f"omnirtc: {exc}\n")
        return 2
    configure_logging(settings)
    if args.command == "replay":
        return _replay(settings, args)
    if settings.cluster.role is Role.WORKER and settings.cluster.processes > 1:
        return asyncio.run(supervise(settings, config, os.environ))
    # Every connection is a file: take all the open files this process may have.
    open_files = raise_open_file_limit()
    # (The media path uses no BLAS routines, so numpy's OpenBLAS threads never wake up on
    # it; see realtime/patches.py's audio level.)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_run(settings, open_files))
    return uvloop.run(_run(settings, open_files))


def raise_open_file_limit() -> int | None:
    """Raise this process's soft limit on open files to its hard limit (every connection
    is a file); returns the limit now in force (None where there is no such limit)."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, _OPEN_FILES_WITHOUT_HARD)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return None if soft == resource.RLIM_INFINITY else soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
        return soft
    log.info("open-file limit raised from %d to %d", soft, target)
    return target


_OPEN_FILES_WITHOUT_HARD = 65536
"""Where the hard limit is unlimited, raise the soft one this far (not to "unlimited",
which some systems refuse)."""


def _engine(settings: Settings, replicas: int) -> Engine:
    return build_engine(
        dataclasses.replace(settings.engine, replicas=replicas), settings.server.max_calls
    )


def _replay(settings: Settings, args: argparse.Namespace) -> int:
    from omni.api import Language, SessionConfig
    from realtime.replay import ReplayError, read_units, run, write_outputs

    try:
        engine = _engine(settings, replicas=1)
        units = read_units(args.input, settings.call.video_frames_per_unit, engine.info.frame_side)
        config = SessionConfig(instructions=args.instructions, language=Language(args.language))
        replayed = run(engine, units, config)
        written = write_outputs(args.input, args.output, replayed, engine.info.name)
    except (ReplayError, EngineUnavailable) as exc:
        log.error("replay failed: %s", exc)
        return 1
    log.info(
        "replayed %d units (%d speaking) through %s: %s",
        replayed.units,
        replayed.speaking_units,
        engine.info.name,
        ", ".join(str(p) for p in written.values()),
    )
    return 0


def _app(settings: Settings) -> tuple[web.Application, str]:
    """The app this process's role serves, and what it serves (for the log)."""
    role = settings.cluster.role
    if role is Role.GATEWAY:
        return create_gateway_app(settings, RedisRegistry.connect(settings.cluster)), "gateway"
    engine = _engine(settings, settings.engine.replicas)
    pool = ReplicaPool(engine, max_queue=settings.engine.max_queue)
    worker = None
    if role is Role.WORKER:
        worker = ClusterWorker(settings, RedisRegistry.connect(settings.cluster))
    app = create_app(settings, pool, worker)
    what = f"engine {engine.info.name}"
    return app, f"{what} as worker {worker.worker_id}" if worker else what


async def _run(settings: Settings, open_files: int | None) -> int:
    try:
        app, what = _app(settings)
    except (FileNotFoundError, PatchedVersionError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    max_connections = fit_to_open_files(
        settings.server.max_connections, open_files, settings.server.max_calls
    )
    if max_connections < settings.server.max_connections:
        log.warning(
            "server.max_connections lowered from %d to %d: this process may open %d files",
            settings.server.max_connections,
            max_connections,
            open_files,
        )
    try:
        tls = _tls_context(settings)
    except TlsError as exc:
        log.error("%s", exc)
        return 2
    runner = GuardedAppRunner(app, HttpLimits.from_settings(settings.server, max_connections))
    await runner.setup()
    site = web.TCPSite(runner, settings.server.host, settings.server.port, ssl_context=tls)
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
    if not settings.auth.api_keys and host not in ("127.0.0.1", "::1", "localhost"):
        log.warning(
            "auth is off and the server listens on %s: anyone who reaches it may call; "
            "list auth.api_keys (README: Access control)",
            host,
        )
    scheme = "https" if tls is not None else "http"
    log.info("omnirtc serving %s: open %s://%s:%s/ to call", what, scheme, shown, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    gc_pauses = GcPauses(app[METRICS])
    freezer = asyncio.create_task(
        freeze_when_ready(app.get(POOL), settings.server.gc_freeze), name="gc-freeze"
    )
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        freezer.cancel()
        await asyncio.gather(freezer, return_exceptions=True)
        await runner.cleanup()
        gc_pauses.close()
    return 0


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    server = settings.server
    if server.tls_cert:
        return server_context(server.tls_cert, server.tls_key)
    if not server.tls_self_signed:
        return None
    made = self_signed(*machine_names(server.host))
    log.info("HTTPS with a self-signed certificate, SHA-256 fingerprint %s", made.fingerprint)
    return self_signed_context(made)


if __name__ == "__main__":
    sys.exit(main())
