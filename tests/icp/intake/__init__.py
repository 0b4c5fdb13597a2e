"""Builders shared by the intake tests: CAP documents, a service area, and the shared fixtures."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from shapely.geometry import box

from tests.shared import shared_file

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CAP12 = "urn:oasis:names:tc:emergency:cap:1.2"

# Helsinki, lon/lat (x = lon). Its swap (lat 24.8..25.3, lon 60.1..60.3) is in the Indian Ocean,
# so an axis-order mistake can never land inside it.
HELSINKI_AREA = box(24.78, 60.10, 25.25, 60.30)
HELSINKI = (60.1699, 24.9384)  # lat, lon
# Sweden, roughly: enough to tell Gävle from the Arabian Sea.
SWEDEN_AREA = box(10.5, 55.3, 24.2, 69.1)


def fixture_bytes(*parts: str) -> bytes:
    """A shared fixture's bytes (the test is skipped when ../shared is absent)."""
    return shared_file("fixtures", *parts).read_bytes()


def cap_area(*, desc: str = "Kamppi", polygon: str | None = None, circle: str | None = None,
             geocodes: tuple[tuple[str, str], ...] = ()) -> str:
    parts = [f"<areaDesc>{desc}</areaDesc>"]
    if polygon is not None:
        parts.append(f"<polygon>{polygon}</polygon>")
    if circle is not None:
        parts.append(f"<circle>{circle}</circle>")
    parts += [f"<geocode><valueName>{n}</valueName><value>{v}</value></geocode>" for n, v in geocodes]
    return f"<area>{''.join(parts)}</area>"


# A small square around central Helsinki, written as CAP writes it: lat,lon pairs.
HELSINKI_SQUARE = "60.16,24.93 60.16,24.95 60.18,24.95 60.18,24.93 60.16,24.93"


def cap_info(*, language: str | None = "en-US", category: str = "Fire", event: str = "Structure fire",
             urgency: str = "Immediate", severity: str = "Severe", certainty: str = "Observed",
             headline: str = "Fire in Kamppi", areas: tuple[str, ...] | None = None, extra: str = "") -> str:
    areas = (cap_area(polygon=HELSINKI_SQUARE),) if areas is None else areas
    lang = f"<language>{language}</language>" if language is not None else ""
    return (
        f"<info>{lang}<category>{category}</category><event>{event}</event><urgency>{urgency}</urgency>"
        f"<severity>{severity}</severity><certainty>{certainty}</certainty>{extra}"
        f"<headline>{headline}</headline>{''.join(areas)}</info>"
    )


def cap_doc(*, identifier: str = "ICP-TEST-1", sender: str = "sensors@icp.example",
            sent: str = "2026-03-01T12:00:00+02:00", status: str = "Actual", msg_type: str = "Alert",
            scope: str = "Public", references: str | None = None, infos: tuple[str, ...] | None = None,
            prefix: str = "", namespace: str = CAP12, encoding: str = "UTF-8") -> str:
    """A CAP alert as text (encode it with ``encoding`` to get what a sender posts)."""
    infos = (cap_info(),) if infos is None else infos
    p = f"{prefix}:" if prefix else ""
    xmlns = f' xmlns:{prefix}="{namespace}"' if prefix else (f' xmlns="{namespace}"' if namespace else "")
    refs = f"<{p}references>{references}</{p}references>" if references is not None else ""
    body = (
        f"<{p}identifier>{identifier}</{p}identifier><{p}sender>{sender}</{p}sender><{p}sent>{sent}</{p}sent>"
        f"<{p}status>{status}</{p}status><{p}msgType>{msg_type}</{p}msgType><{p}scope>{scope}</{p}scope>{refs}"
    )
    if prefix:
        # The builder writes infos unprefixed; give them the prefix too.
        infos = tuple(_prefixed(i, prefix) for i in infos)
    return f'<?xml version="1.0" encoding="{encoding}"?>\n<{p}alert{xmlns}>{body}{"".join(infos)}</{p}alert>'


def _prefixed(fragment: str, prefix: str) -> str:
    return re.sub(r"<(/?)([A-Za-z])", rf"<\1{prefix}:\2", fragment)
