"""Messaging: incident, agency, broadcast, talkgroup and direct channels, persisted and delivered over the gateway."""
