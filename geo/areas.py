"""Areas: jurisdictions, zones, beats and geofences as polygons, and which ones hold a point."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard, get_args

import numpy as np
import shapely
from numpy.typing import NDArray
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from geo.coords import Point
from geo.geojson import (
    Feature,
    GeometryError,
    feature_collection_to_geojson,
    features_from_geojson,
    require_valid,
)

AreaKind = Literal["jurisdiction", "zone", "beat", "geofence"]
AREA_KINDS: tuple[AreaKind, ...] = get_args(AreaKind)


class AreaError(GeometryError):
    """An area is malformed (bad id, kind or geometry); the message names which and why."""


def is_area_kind(value: object) -> TypeGuard[AreaKind]:
    return value in AREA_KINDS


def _text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise AreaError(f"area {name} must be a non-empty string, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Area:
    """One polygonal area of one agency. The geometry is x=lon, y=lat, valid and non-empty."""

    id: str
    agency: str
    kind: AreaKind
    name: str
    geometry: Polygon | MultiPolygon

    def __post_init__(self) -> None:
        _text(self.id, "id")
        _text(self.agency, "agency")
        if not isinstance(self.name, str):
            raise AreaError(f"area {self.id!r}: name must be a string")
        if self.kind not in AREA_KINDS:
            raise AreaError(f"area {self.id!r}: kind must be one of {', '.join(AREA_KINDS)}, got {self.kind!r}")
        geom = self.geometry
        if not isinstance(geom, (Polygon, MultiPolygon)) or geom.is_empty:
            raise AreaError(
                f"area {self.id!r}: geometry must be a non-empty Polygon or MultiPolygon, "
                f"got {getattr(geom, 'geom_type', type(geom).__name__)}"
            )
        if not shapely.is_valid(geom):
            raise AreaError(f"area {self.id!r}: geometry is not valid: {shapely.is_valid_reason(geom)}")

    def contains(self, point: Point) -> bool:
        """True when `point` is inside the area or on its boundary."""
        return bool(shapely.intersects_xy(self.geometry, point.lon, point.lat))

    def to_feature(self) -> Feature:
        props = {"id": self.id, "agency": self.agency, "kind": self.kind, "name": self.name}
        return Feature(geometry=self.geometry, properties=props, id=self.id)


@dataclass(frozen=True, slots=True)
class AreaImport:
    """Areas read from GeoJSON, and a warning for each geometry that had to be repaired."""

    areas: list[Area]
    warnings: list[str]


def _polygonal(geometry: BaseGeometry, where: str) -> Polygon | MultiPolygon:
    if isinstance(geometry, (Polygon, MultiPolygon)):
        return geometry
    polygons = [g for g in shapely.get_parts(geometry) if isinstance(g, (Polygon, MultiPolygon))]
    if not polygons or len(polygons) != len(shapely.get_parts(geometry)):
        raise AreaError(f"{where}: an area must be a Polygon or MultiPolygon, not {geometry.geom_type}")
    merged = shapely.union_all(polygons)
    if not isinstance(merged, (Polygon, MultiPolygon)):
        raise AreaError(f"{where}: polygons merge into a {merged.geom_type}")
    return merged


def _property(feature: Feature, name: str, given: str | None, where: str) -> str | None:
    # The caller's value (e.g. `icp areas import --agency fire`) fills in what the file lacks,
    # but a file that says otherwise is refused: guessing which one is right is not ours to do.
    value = feature.properties.get(name)
    if value is not None and not isinstance(value, str):
        raise AreaError(f"{where}: property {name!r} must be a string, got {value!r}")
    if given is not None and value is not None and value != given:
        raise AreaError(f"{where}: property {name} {value!r} conflicts with {name} {given!r} given")
    return value if value is not None else given


def area_from_feature(
    feature: Feature,
    *,
    agency: str | None = None,
    kind: AreaKind | None = None,
    default_id: str | None = None,
    repair: bool = False,
    where: str = "feature",
) -> tuple[Area, str | None]:
    """An `Area` from a GeoJSON feature with properties ``id``, ``agency``, ``kind``, ``name``.

    `agency` and `kind` fill in missing properties; the id falls back to the feature's ``id``
    member, then `default_id`; the name falls back to the id. An invalid polygon is an
    `AreaError` unless `repair` is set; then it is repaired and a warning is returned with it.
    """
    if feature.geometry is None:
        raise AreaError(f"{where}: an area needs a geometry, got null")
    fid = feature.properties.get("id", feature.id)
    area_id = str(fid) if isinstance(fid, (str, int)) and not isinstance(fid, bool) else default_id
    if area_id is None:
        raise AreaError(f"{where}: no 'id' property or feature id")
    agency_value = _property(feature, "agency", agency, where)
    kind_value = _property(feature, "kind", kind, where)
    if agency_value is None:
        raise AreaError(f"{where}: no 'agency' property and no agency given")
    if kind_value is None:
        raise AreaError(f"{where}: no 'kind' property and no kind given")
    if not is_area_kind(kind_value):
        raise AreaError(f"{where}: kind must be one of {', '.join(AREA_KINDS)}, got {kind_value!r}")
    name = feature.properties.get("name")
    geometry = _polygonal(feature.geometry, where)
    try:
        fixed, warning = require_valid(geometry, repair=repair, where=f"{where} ({area_id})")
    except GeometryError as exc:
        raise AreaError(f"{exc}; pass repair to fix it with make_valid") from None
    area = Area(
        id=area_id,
        agency=agency_value,
        kind=kind_value,
        name=name if isinstance(name, str) else area_id,
        geometry=_polygonal(fixed, where),
    )
    return area, warning


def areas_from_geojson(
    obj: Any,
    *,
    agency: str | None = None,
    kind: AreaKind | None = None,
    repair: bool = False,
) -> AreaImport:
    """Areas from a GeoJSON Feature or FeatureCollection (see `area_from_feature`).

    All or nothing: the first bad feature raises, naming it, and no area is returned. Features
    without an id get ``"{agency}-{kind}-{n}"`` (n counting from 1 in document order). Two
    features with one id are refused.
    """
    areas: list[Area] = []
    warnings: list[str] = []
    seen: set[str] = set()
    for i, feature in enumerate(features_from_geojson(obj)):
        where = f"feature {i}"
        default_id = f"{agency}-{kind}-{i + 1}" if agency and kind else None
        area, warning = area_from_feature(
            feature, agency=agency, kind=kind, default_id=default_id, repair=repair, where=where
        )
        if area.id in seen:
            raise AreaError(f"{where}: id {area.id!r} appears more than once")
        seen.add(area.id)
        areas.append(area)
        if warning is not None:
            warnings.append(warning)
    return AreaImport(areas=areas, warnings=warnings)


def areas_to_geojson(areas: Iterable[Area], *, precision: int | None = None) -> dict[str, Any]:
    """Areas as a GeoJSON FeatureCollection with properties id, agency, kind and name."""
    return feature_collection_to_geojson((a.to_feature() for a in areas), precision=precision)


_KIND_ORDER = {k: i for i, k in enumerate(AREA_KINDS)}


class AreaIndex:
    """A mutable set of areas with a spatial index for "which areas hold this point?".

    Backed by a shapely STRtree, which cannot change once built: `add` and `remove` only mark
    it stale, and the next query rebuilds it (O(n log n)), so a burst of edits costs one build.
    Not safe for concurrent mutation; ICP mutates it from the event loop only.
    """

    def __init__(self, areas: Iterable[Area] = ()) -> None:
        self._areas: dict[str, Area] = {}
        self._built: tuple[shapely.STRtree, list[Area], NDArray[np.object_]] | None = None
        for area in areas:
            self.add(area)

    def add(self, area: Area) -> None:
        """Add `area`, replacing any area with the same id."""
        if not isinstance(area, Area):
            raise TypeError(f"expected an Area, got {type(area).__name__}")
        self._areas[area.id] = area
        self._built = None

    def remove(self, area_id: str) -> Area:
        """Remove and return the area with `area_id` (KeyError if there is none)."""
        area = self._areas.pop(area_id)
        self._built = None
        return area

    def get(self, area_id: str) -> Area | None:
        return self._areas.get(area_id)

    def __len__(self) -> int:
        return len(self._areas)

    def __iter__(self) -> Iterator[Area]:
        return iter(list(self._areas.values()))

    def __contains__(self, area_id: object) -> bool:
        return area_id in self._areas

    def areas(self, *, kind: AreaKind | None = None, agency: str | None = None) -> list[Area]:
        """Areas filtered by kind and agency, in insertion order."""
        return [
            a
            for a in self._areas.values()
            if (kind is None or a.kind == kind) and (agency is None or a.agency == agency)
        ]

    def _index(self) -> tuple[shapely.STRtree, list[Area], NDArray[np.object_]]:
        built = self._built
        if built is None:
            order = list(self._areas.values())
            geoms = np.array([a.geometry for a in order], dtype=object)
            # Prepared geometries make each point-in-polygon test logarithmic in vertex count,
            # which matters for detailed municipal borders.
            shapely.prepare(geoms)
            built = (shapely.STRtree(geoms), order, geoms)
            self._built = built
        return built

    def containing(self, point: Point, kind: AreaKind | None = None) -> list[Area]:
        """Areas holding `point` (boundary included), optionally of one kind.

        Ordered by kind (jurisdiction, zone, beat, geofence), then smallest first, since the
        smallest area is the most specific answer, then by id.
        """
        tree, order, geoms = self._index()
        if not order:
            return []
        target = shapely.Point(point.lon, point.lat)
        candidates = tree.query(target)
        hits = candidates[shapely.intersects(geoms[candidates], target)]
        found = [order[i] for i in hits if kind is None or order[i].kind == kind]
        found.sort(key=lambda a: (_KIND_ORDER[a.kind], a.geometry.area, a.id))
        return found

    def jurisdiction_of(self, point: Point) -> list[str]:
        """Ids of the agencies whose jurisdiction holds `point`, sorted (overlaps are real)."""
        return sorted({a.agency for a in self.containing(point, "jurisdiction")})

    def to_geojson(
        self,
        *,
        kind: AreaKind | None = None,
        agency: str | None = None,
        precision: int | None = None,
    ) -> dict[str, Any]:
        """The areas (filtered as `areas`) as a GeoJSON FeatureCollection."""
        return areas_to_geojson(self.areas(kind=kind, agency=agency), precision=precision)

    def load_geojson(
        self,
        obj: Any,
        *,
        agency: str | None = None,
        kind: AreaKind | None = None,
        repair: bool = False,
    ) -> list[str]:
        """Add every area of a GeoJSON document (all or nothing); returns the repair warnings."""
        imported = areas_from_geojson(obj, agency=agency, kind=kind, repair=repair)
        for area in imported.areas:
            self.add(area)
        return imported.warnings
