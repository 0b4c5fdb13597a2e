"""Geo endpoints: road layer, areas, geocoding, reverse geocoding and routes."""

from __future__ import annotations

import asyncio

from aiohttp import web

from geo.coords import CoordinateError, Point
from icp import appkeys
from icp.auth.guard import require
from icp.errors import FieldError, not_found, validation
from icp.httpapi import json_response, operation, query_int

MAX_BBOX_DEGREES = 0.5  # about 50 km: the console asks for what it shows, not for a country

FEATURE_COLLECTION = {"type": "object", "properties": {"type": {"const": "FeatureCollection"},
                                                      "features": {"type": "array"}}}
GEOCODE_RESULT = {"type": "object", "properties": {
    "label": {"type": "string"}, "kind": {"enum": ["address", "street", "place"]}, "score": {"type": "number"},
    "lat": {"type": "number"}, "lon": {"type": "number"}, "distance_m": {"type": ["number", "null"]},
    "source": {"type": "string"}}}


def _bbox(request: web.Request) -> tuple[float, float, float, float]:
    raw = request.query.get("bbox")
    if not raw:
        raise validation([FieldError("bbox", "required: min_lon,min_lat,max_lon,max_lat")])
    return parse_bbox(raw)


def parse_bbox(raw: str, *, max_degrees: float = MAX_BBOX_DEGREES) -> tuple[float, float, float, float]:
    """``min_lon,min_lat,max_lon,max_lat`` (GeoJSON's order), checked; 422 naming ``bbox``."""
    try:
        values = [float(v) for v in raw.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise validation([FieldError("bbox", "expected four numbers: min_lon,min_lat,max_lon,max_lat")])
    min_lon, min_lat, max_lon, max_lat = values
    try:
        Point(lat=min_lat, lon=min_lon), Point(lat=max_lat, lon=max_lon)
    except CoordinateError as exc:
        raise validation([FieldError("bbox", str(exc))]) from None
    if min_lon > max_lon or min_lat > max_lat:
        raise validation([FieldError("bbox", "min must not exceed max (order: min_lon,min_lat,max_lon,max_lat)")])
    if max_lon - min_lon > max_degrees or max_lat - min_lat > max_degrees:
        raise validation([FieldError("bbox", f"at most {max_degrees}° on a side")])
    return min_lon, min_lat, max_lon, max_lat


def _latlon(request: web.Request, name: str) -> Point:
    raw = request.query.get(name)
    if not raw:
        raise validation([FieldError(name, "required: lat,lon")])
    try:
        return Point.from_latlon_text(raw)
    except CoordinateError as exc:
        raise validation([FieldError(name, str(exc))]) from None


@operation(
    "Road layer for the map: links intersecting a bbox (GeoJSON, [lon, lat])", tags=("geo",),
    parameters=({"name": "bbox", "in": "query", "required": True, "schema": {"type": "string"},
                 "description": "min_lon,min_lat,max_lon,max_lat (at most 0.5° a side)"},),
    responses={200: {"description": "roads", "schema": FEATURE_COLLECTION}, 503: "no road network imported"},
)
@require()
async def roads(request: web.Request) -> web.Response:
    bbox = _bbox(request)
    geography = request.app[appkeys.GEOGRAPHY]
    return json_response(await asyncio.to_thread(geography.roads_geojson, bbox))


@operation(
    "Areas (jurisdictions, zones, beats, geofences) as GeoJSON", tags=("geo",),
    parameters=({"name": "agency", "in": "query", "schema": {"type": "string"}},
                {"name": "kind", "in": "query", "schema": {"enum": ["jurisdiction", "zone", "beat", "geofence"]}}),
    responses={200: {"description": "areas", "schema": FEATURE_COLLECTION}},
)
@require()
async def areas(request: web.Request) -> web.Response:
    kind = request.query.get("kind")
    if kind is not None and kind not in ("jurisdiction", "zone", "beat", "geofence"):
        raise validation([FieldError("kind", "one of jurisdiction, zone, beat, geofence")])
    index = request.app[appkeys.GEOGRAPHY].areas
    return json_response(index.to_geojson(kind=kind, agency=request.query.get("agency"), precision=7))  # type: ignore[arg-type]


@operation(
    "Geocode an address, street or place (offline gazetteer)", tags=("geo",),
    parameters=({"name": "q", "in": "query", "required": True, "schema": {"type": "string", "maxLength": 200}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 20}}),
    responses={200: {"description": "ranked results", "schema": {"type": "object", "properties": {
        "results": {"type": "array", "items": GEOCODE_RESULT}}}}, 503: "no road network imported"},
)
@require()
async def geocode(request: web.Request) -> web.Response:
    query = request.query.get("q", "")
    if not query.strip():
        raise validation([FieldError("q", "required: the text to look up")])
    limit = query_int(request, "limit", 5, lo=1, hi=20)
    geography = request.app[appkeys.GEOGRAPHY]
    return json_response({"results": await asyncio.to_thread(geography.geocode, query, limit)})


@operation(
    "Reverse geocode: the nearest address, else the nearest street", tags=("geo",),
    parameters=({"name": "lat", "in": "query", "required": True, "schema": {"type": "number"}},
                {"name": "lon", "in": "query", "required": True, "schema": {"type": "number"}}),
    responses={200: {"description": "the result", "schema": GEOCODE_RESULT}, 404: "nothing near"},
)
@require()
async def reverse(request: web.Request) -> web.Response:
    try:
        point = Point(lat=float(request.query.get("lat", "")), lon=float(request.query.get("lon", "")))
    except ValueError as exc:
        raise validation([FieldError("lat,lon", str(exc) if isinstance(exc, CoordinateError)
                                     else "lat and lon are required numbers")]) from None
    found = await asyncio.to_thread(request.app[appkeys.GEOGRAPHY].reverse, point)
    if found is None:
        raise not_found("an address or street near that point")
    return json_response(found)


@operation(
    "A route for navigation: GeoJSON LineString with length, time and streets in order", tags=("geo",),
    parameters=({"name": "from", "in": "query", "required": True, "schema": {"type": "string"},
                 "description": "lat,lon"},
                {"name": "to", "in": "query", "required": True, "schema": {"type": "string"},
                 "description": "lat,lon"}),
    responses={200: {"description": "the route (properties.method: road or straight_line)",
                     "schema": {"type": "object"}}, 404: "no route"},
)
@require()
async def route(request: web.Request) -> web.Response:
    start, end = _latlon(request, "from"), _latlon(request, "to")
    return json_response(await asyncio.to_thread(request.app[appkeys.GEOGRAPHY].route, start, end))


def setup(app: web.Application) -> None:
    app.router.add_get("/api/v1/geo/roads", roads)
    app.router.add_get("/api/v1/geo/areas", areas)
    app.router.add_get("/api/v1/geo/geocode", geocode)
    app.router.add_get("/api/v1/geo/reverse", reverse)
    app.router.add_get("/api/v1/geo/route", route)


