"""Typed keys of the objects the aiohttp application holds."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from omni.pool import ReplicaPool
from signaling.auth import Authenticator
from signaling.sessions import CallManager
from signaling.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", ReplicaPool)
CALLS = web.AppKey("calls", CallManager)
WEB_DIR = web.AppKey("web_dir", Path)
AUTH = web.AppKey("auth", Authenticator)
