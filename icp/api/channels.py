"""Messaging over HTTP: channels, history, sending, receipts and attachments."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    pass
