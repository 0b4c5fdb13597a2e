"""Outbound agency webhooks: Standard Webhooks signing, SSRF guards, retry schedule, EIDO payloads.

The modules here are pure building blocks (only ``ssrf`` touches the event loop, to resolve
names); the delivery engine, its tables and the REST API are built on them. See
``docs/webhooks.md``.
"""
