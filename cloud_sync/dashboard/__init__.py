"""The operator dashboard: fleet, device, models and results pages over the cloud API.

Plain HTML, CSS and JavaScript served by the API process (no build step, nothing fetched from
elsewhere at run time), a server-sent events feed of fleet changes, and a login in front of
both the pages and the API. See docs/dashboard.md.
"""

from __future__ import annotations

from fastapi import FastAPI

from cloud_sync.config import CloudConfig
from cloud_sync.dashboard.auth import COOKIE, Sessions, is_public, refuse
from cloud_sync.dashboard.events import Feed
from cloud_sync.dashboard.router import router
from cloud_sync.dashboard.throttle import LoginThrottle
from cloud_sync.mqtt import MqttLink
from cloud_sync.store import Store

__all__ = ["COOKIE", "Feed", "is_public", "mount", "refuse"]


def mount(app: FastAPI, config: CloudConfig, store: Store, link: MqttLink) -> Feed:
    """Add the dashboard's routes to ``app``; the returned feed is closed at shutdown."""
    feed = Feed(store, link)
    app.state.sessions = Sessions(config, store)
    app.state.login_throttle = LoginThrottle()
    app.state.feed = feed
    app.include_router(router)
    return feed
