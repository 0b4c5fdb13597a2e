"""The Python client SDK for ICP's WebSocket gateway: field units and console scripts."""

from icp.client.connection import (
    Backoff,
    Connection,
    ConnectionOptions,
    Event,
    Item,
    Message,
    Receipt,
    Resync,
    http_url,
    websocket_url,
)
from icp.client.console import ConsoleClient
from icp.client.errors import ClientClosed, ClientError, OpError, OpTimeout, QueueFull, Unauthorized
from icp.client.field_unit import FieldUnitClient

__all__ = [
    "Backoff",
    "ClientClosed",
    "ClientError",
    "Connection",
    "ConnectionOptions",
    "ConsoleClient",
    "Event",
    "FieldUnitClient",
    "Item",
    "Message",
    "OpError",
    "OpTimeout",
    "QueueFull",
    "Receipt",
    "Resync",
    "Unauthorized",
    "http_url",
    "websocket_url",
]
