"""The real-time gateway: one WebSocket (`/ws`) for field units and consoles."""

from icp.gateway.handler import setup

__all__ = ["setup"]
