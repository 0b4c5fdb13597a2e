"""The city's geography on a node: road network, gazetteer and areas, loaded and kept current.

`icp roads import` builds the road network and the gazetteer from an OSM extract into
``ICP_DATA_DIR/roads`` and records the import in the event log; every node on that data directory
(re)loads them when it starts or sees the event. Without an import, travel times fall back to the
straight-line estimate (flagged as such) and geocoding answers 503. Areas live in PostgreSQL and
are reloaded whenever an ``areas.*`` event is seen, so every node agrees.

CPU-bound geo work (routes, geocoding, imports) runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from geo.areas import Area, AreaIndex, areas_from_geojson, is_area_kind
from geo.coords import Point
from geo.gazetteer import Gazetteer
from geo.geocoder import Geocoder, GeocoderUnavailable, check_query
from geo.geojson import geometry_to_geojson
from geo.road_graph import RoadNetwork, file_sha256
from geo.travel import RoadTimer, StraightLineTimer
from icp.store import eventlog
from icp.store.eventlog import NewEvent, RecordedEvent

log = logging.getLogger(__name__)

ROADS_IMPORTED = "roads.imported"
AREAS_IMPORTED = "areas.imported"
MAX_AREAS_FILE_BYTES = 50 * 1024 * 1024
MAX_ROADS_IN_RESPONSE = 20_000


class GeographyError(RuntimeError):
    """An import or query cannot be done as asked; the message says why."""


class NoRoadNetwork(GeographyError):
    """The question needs a road network and none has been imported."""


def roads_dir(data_dir: Path) -> Path:
    return data_dir / "roads"


@dataclass(frozen=True)
class RoadsImport:
    """What `icp roads import` built (the manifest written as ``roads/current.json``)."""

    source: str
    sha256: str
    network_file: str
    gazetteer_file: str
    nodes: int
    links: int
    addresses: int
    imported_at: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def import_roads(pbf: Path, data_dir: Path) -> RoadsImport:
    """Build the road network and gazetteer from ``pbf`` into ``data_dir/roads`` (blocking)."""
    if not pbf.is_file():
        raise GeographyError(f"{pbf} is not a file")
    target = roads_dir(data_dir)
    target.mkdir(parents=True, exist_ok=True)
    digest = file_sha256(pbf)
    network = RoadNetwork.from_pbf(pbf)
    gazetteer = Gazetteer.from_osm(pbf)
    network_file = f"network-{digest[:16]}.npz"
    gazetteer_file = f"gazetteer-{digest[:16]}.npz"
    network.save(target / network_file)
    gazetteer.save(target / gazetteer_file)
    manifest = RoadsImport(
        source=pbf.name, sha256=digest, network_file=network_file, gazetteer_file=gazetteer_file,
        nodes=network.node_count, links=network.link_count,
        addresses=int(gazetteer.stats.get("addresses", 0)),
        imported_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    _write_manifest(target, manifest)
    return manifest


def install_network(network: RoadNetwork, data_dir: Path, *, source: str) -> RoadsImport:
    """Install a road network built elsewhere (e.g. a synthetic city for benchmarks) without a
    gazetteer: travel times and routes work, geocoding needs the external geocoder."""
    target = roads_dir(data_dir)
    target.mkdir(parents=True, exist_ok=True)
    network_file = f"network-{source}.npz"
    network.save(target / network_file)
    manifest = RoadsImport(
        source=source, sha256=file_sha256(target / network_file), network_file=network_file, gazetteer_file="",
        nodes=network.node_count, links=network.link_count, addresses=0,
        imported_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    _write_manifest(target, manifest)
    return manifest


def _write_manifest(target: Path, manifest: RoadsImport) -> None:
    tmp = target / "current.json.tmp"
    tmp.write_text(json.dumps(manifest.to_json(), indent=2))
    os.replace(tmp, target / "current.json")  # atomic: a node never reads half a manifest


def read_manifest(data_dir: Path) -> RoadsImport | None:
    path = roads_dir(data_dir) / "current.json"
    try:
        return RoadsImport(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise GeographyError(f"{path} is damaged ({exc}); run `icp roads import` again") from None


@dataclass(frozen=True)
class LoadedRoads:
    manifest: RoadsImport
    network: RoadNetwork
    gazetteer: Gazetteer | None  # None for an installed network without addresses
    timer: RoadTimer
    # Per-link bounding boxes for "roads in this bbox" (min_lon, min_lat, max_lon, max_lat).
    link_boxes: np.ndarray


def load_roads(data_dir: Path) -> LoadedRoads | None:
    """The imported roads (blocking; about a tenth of a second for a city), or None."""
    manifest = read_manifest(data_dir)
    if manifest is None:
        return None
    folder = roads_dir(data_dir)
    network = RoadNetwork.load(folder / manifest.network_file)
    gazetteer = Gazetteer.load(folder / manifest.gazetteer_file) if manifest.gazetteer_file else None
    timer = RoadTimer(network)
    network.search  # noqa: B018 - build the search graph now, not on the first incident
    ptr = network.shape_ptr
    starts = ptr[:-1]
    boxes = np.column_stack([
        np.minimum.reduceat(network.shape_lon, starts), np.minimum.reduceat(network.shape_lat, starts),
        np.maximum.reduceat(network.shape_lon, starts), np.maximum.reduceat(network.shape_lat, starts),
    ])
    return LoadedRoads(manifest, network, gazetteer, timer, boxes)


class Geography:
    """One per node: what the geo endpoints and the dispatch core ask."""

    def __init__(self, data_dir: Path, *, external: Geocoder | None = None) -> None:
        self.data_dir = data_dir
        self.external = external  # asked only when the offline gazetteer has no answer
        self.roads: LoadedRoads | None = None
        self.areas = AreaIndex()
        self.straight_line = StraightLineTimer()
        self._reload_lock = asyncio.Lock()

    @property
    def timer(self) -> RoadTimer | StraightLineTimer:
        return self.roads.timer if self.roads is not None else self.straight_line

    async def load(self, pool: asyncpg.Pool) -> None:
        await self.reload_roads()
        await self.reload_areas(pool)

    async def reload_roads(self) -> None:
        async with self._reload_lock:
            started = time.perf_counter()
            self.roads = await asyncio.to_thread(load_roads, self.data_dir)
            if self.roads is not None:
                log.info("road network %s loaded (%d nodes) in %.2f s", self.roads.manifest.source,
                         self.roads.network.node_count, time.perf_counter() - started)
            else:
                log.info("no road network imported: travel times use the straight-line estimate")

    async def reload_areas(self, pool: asyncpg.Pool) -> None:
        rows = await pool.fetch("SELECT id, agency_id, kind, name, geometry FROM areas ORDER BY id")
        self.areas = await asyncio.to_thread(_area_index, rows)

    def on_events(self, pool: asyncpg.Pool, batch: Sequence[RecordedEvent]) -> None:
        """Feed subscriber: reload what an import changed (in the background)."""
        types = {e.type for e in batch}
        if ROADS_IMPORTED in types:
            asyncio.get_running_loop().create_task(self.reload_roads())
        if any(t.startswith("areas.") for t in types):
            asyncio.get_running_loop().create_task(self.reload_areas(pool))

    # -- queries ----------------------------------------------------------------------------------
    def roads_geojson(
        self, bbox: tuple[float, float, float, float], limit: int = MAX_ROADS_IN_RESPONSE
    ) -> dict[str, Any]:
        roads = self._need_roads()
        min_lon, min_lat, max_lon, max_lat = bbox
        b = roads.link_boxes
        hits = np.nonzero((b[:, 0] <= max_lon) & (b[:, 2] >= min_lon) & (b[:, 1] <= max_lat) & (b[:, 3] >= min_lat))[0]
        net = roads.network
        features = []
        for link in hits[:limit].tolist():
            a, z = int(net.shape_ptr[link]), int(net.shape_ptr[link + 1])
            fwd, bwd = float(net.link_fwd_s[link]), float(net.link_bwd_s[link])
            features.append({
                "type": "Feature",
                "id": link,
                "geometry": {"type": "LineString", "coordinates": [
                    [round(float(lo), 7), round(float(la), 7)]
                    for lo, la in zip(net.shape_lon[a:z], net.shape_lat[a:z], strict=True)
                ]},
                "properties": {
                    "street": net.link_street(link), "class": net.link_road_class(link),
                    "length_m": round(float(net.link_length_m[link]), 1),
                    "oneway": "forward" if not np.isfinite(bwd) else ("backward" if not np.isfinite(fwd) else "no"),
                },
            })
        return {"type": "FeatureCollection", "features": features, "truncated": len(hits) > limit,
                "attribution": "© OpenStreetMap contributors (ODbL)"}

    def _need_roads(self) -> LoadedRoads:
        if self.roads is None:
            raise NoRoadNetwork("no road network has been imported (run `icp roads import FILE.osm.pbf`)")
        return self.roads

    @property
    def can_geocode(self) -> bool:
        return bool(self.roads and self.roads.gazetteer) or self.external is not None

    def _geocoders(self) -> list[Geocoder]:
        found: list[Geocoder] = [self.roads.gazetteer] if self.roads and self.roads.gazetteer else []
        if self.external is not None:
            found.append(self.external)
        if not found:
            raise NoRoadNetwork("no road network has been imported (run `icp roads import FILE.osm.pbf`) "
                                "and no external geocoder is configured")
        return found

    def geocode(self, query: str, limit: int) -> list[dict[str, Any]]:
        """Offline first; the external geocoder (blocking: call from a thread) only if that
        finds nothing. An external service that fails is skipped, not an error."""
        check_query(query, limit)
        for geocoder in self._geocoders():
            try:
                results = geocoder.geocode(query, limit)
            except GeocoderUnavailable as exc:
                log.warning("geocoder unavailable: %s", exc)
                continue
            if results:
                return [r.to_mapping() for r in results]
        return []

    def reverse(self, point: Point) -> dict[str, Any] | None:
        for geocoder in self._geocoders():
            try:
                found = geocoder.reverse(point)
            except GeocoderUnavailable as exc:
                log.warning("geocoder unavailable: %s", exc)
                continue
            if found is not None:
                return found.to_mapping()
        return None

    def offline_address(self, point: Point) -> str | None:
        """The nearest address the offline gazetteer knows (never the external geocoder: this is
        for hot paths such as intake, which must not wait on the network)."""
        gazetteer = self.roads.gazetteer if self.roads else None
        found = gazetteer.reverse(point) if gazetteer is not None else None
        return found.to_mapping()["label"] if found is not None else None

    def route(self, start: Point, end: Point) -> dict[str, Any]:
        if self.roads is None:
            estimate = self.straight_line.one_to_many(end, [start], 86_400)[0]
            return {"type": "Feature",
                    "geometry": {"type": "LineString", "coordinates": [start.to_lonlat(), end.to_lonlat()]},
                    "properties": {"length_m": estimate.distance_m, "time_s": estimate.eta_s, "streets": [],
                                   "method": "straight_line"}}
        feature = self.roads.timer.route(start, end).to_geojson()
        feature["properties"]["method"] = "road"
        return feature


def _area_index(rows: Sequence[asyncpg.Record]) -> AreaIndex:
    areas: list[Area] = []
    for row in rows:
        imported = areas_from_geojson(
            {"type": "Feature", "id": row["id"], "geometry": row["geometry"],
             "properties": {"id": row["id"], "agency": row["agency_id"], "kind": row["kind"], "name": row["name"]}},
        )
        areas.extend(imported.areas)
    return AreaIndex(areas)


# -- area imports (shared by `icp areas import` and the HTTP endpoint) -------------------------

def parse_area_file(path: Path) -> Any:
    size = path.stat().st_size
    if size > MAX_AREAS_FILE_BYTES:
        raise GeographyError(f"{path} is {size} bytes; the limit is {MAX_AREAS_FILE_BYTES}")
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GeographyError(f"{path} is not valid JSON: {exc}") from None


async def store_areas(
    conn: asyncpg.Connection, document: Any, *, agency: str, kind: str | None, repair: bool,
    actor: dict[str, Any] | None = None,
) -> tuple[list[Area], list[str], list[RecordedEvent]]:
    """Validate GeoJSON areas (all or nothing), upsert them and record the import, atomically."""
    if kind is not None and not is_area_kind(kind):
        raise GeographyError(f"kind must be jurisdiction, zone, beat or geofence, not {kind!r}")
    imported = await asyncio.to_thread(areas_from_geojson, document, agency=agency, kind=kind, repair=repair)
    async with conn.transaction():
        for area in imported.areas:
            await conn.execute(
                "INSERT INTO areas (id, agency_id, kind, name, geometry) VALUES ($1, $2, $3, $4, $5)"
                " ON CONFLICT (id) DO UPDATE SET agency_id = EXCLUDED.agency_id, kind = EXCLUDED.kind,"
                " name = EXCLUDED.name, geometry = EXCLUDED.geometry, updated_at = now()",
                area.id, area.agency, area.kind, area.name, geometry_to_geojson(area.geometry),
            )
        recorded = await eventlog.append(conn, [NewEvent(
            AREAS_IMPORTED, f"agency:{agency}",
            {"agency": agency, "kind": kind, "ids": [a.id for a in imported.areas], "warnings": imported.warnings},
            actor=actor or dict(eventlog.SYSTEM_ACTOR),
        )])
    return imported.areas, imported.warnings, recorded
