"""Synthetic cities: deterministic, realistically shaped road networks of any size, for tests and
benchmarks.

The shape is a perturbed grid: blocks of uneven size (70–160 m by default), junctions jittered off
the grid, some streets bent, arterials every few blocks at higher speeds (some of them split into
one-way pairs, as downtown couplets are), a share of local streets one-way in alternating
directions, living streets, and missing links (dead ends, superblocks). The same plan and seed
always give the same network, which is the same `RoadNetwork` type an OSM extract gives.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray

from geo.coords import EARTH_RADIUS_M
from geo.road_graph import CLASS_CODE, RoadNetwork, WaySet


@dataclass(frozen=True)
class CityPlan:
    """What to generate. ``rows × cols`` junctions; the rest shapes the streets."""

    rows: int = 40
    cols: int = 40
    seed: int = 0
    south_lat: float = 60.0
    west_lon: float = 25.0
    block_min_m: float = 70.0
    block_max_m: float = 160.0
    jitter_m: float = 12.0
    bend_share: float = 0.25  # local links drawn with a kink in the middle
    bend_m: float = 10.0
    arterial_every: int = 8  # every 8th row and column is an arterial
    couplet_every: int = 3  # every 3rd arterial is a pair of one-way streets
    arterial_kmh: tuple[float, ...] = (50.0, 60.0, 70.0)
    local_kmh: tuple[float, ...] = (30.0, 30.0, 40.0)
    living_share: float = 0.05  # local streets that are living streets (20 km/h)
    one_way_share: float = 0.12  # local streets that are one-way
    missing_share: float = 0.06  # local links left out

    def __post_init__(self) -> None:
        if self.rows < 2 or self.cols < 2:
            raise ValueError("a city needs at least 2 × 2 junctions")
        if not 0 < self.block_min_m <= self.block_max_m:
            raise ValueError("block sizes must satisfy 0 < min <= max")
        if self.arterial_every < 2:
            raise ValueError("arterial_every must be at least 2")
        for share in (self.bend_share, self.living_share, self.one_way_share, self.missing_share):
            if not 0.0 <= share < 1.0:
                raise ValueError("shares must be within [0, 1)")

    @classmethod
    def for_nodes(cls, nodes: int, seed: int = 0) -> CityPlan:
        """A square city with at least ``nodes`` junctions (a few extra for isolated ones)."""
        side = max(2, math.ceil(math.sqrt(nodes * 1.01)))
        return cls(rows=side, cols=side, seed=seed)


def synthetic_city(plan: CityPlan | None = None) -> RoadNetwork:
    """Generate the road network ``plan`` describes (the default plan: 40 × 40 junctions)."""
    p = plan or CityPlan()
    rng = np.random.default_rng(p.seed)
    rows, cols = p.rows, p.cols

    # Junction positions in metres east/north of the south-west corner.
    xs = np.concatenate([[0.0], np.cumsum(rng.uniform(p.block_min_m, p.block_max_m, cols - 1))])
    ys = np.concatenate([[0.0], np.cumsum(rng.uniform(p.block_min_m, p.block_max_m, rows - 1))])
    gx = np.broadcast_to(xs, (rows, cols)) + rng.uniform(-p.jitter_m, p.jitter_m, (rows, cols))
    gy = np.broadcast_to(ys[:, None], (rows, cols)) + rng.uniform(
        -p.jitter_m, p.jitter_m, (rows, cols)
    )
    node = np.arange(rows * cols, dtype=np.int64).reshape(rows, cols)

    names: list[str] = [""]
    parts: list[_Street] = []
    # Streets along rows run east (node order west to east); along columns, north.
    for axis, count in (("row", rows), ("col", cols)):
        seconds: set[int] = set()  # the second street of a couplet runs against the first
        for k in range(count):
            line = node[k, :] if axis == "row" else node[:, k]
            ordinal = k + 1
            arterial = k % p.arterial_every == 0
            second_of_couplet = k in seconds
            if arterial or second_of_couplet:
                corridor = k // p.arterial_every
                couplet = corridor % p.couplet_every == 1 and k + 1 < count
                if couplet and not second_of_couplet:
                    seconds.add(k + 1)
                kmh = float(rng.choice(p.arterial_kmh))
                label = f"{ordinal} {'Boulevard' if axis == 'row' else 'Avenue'}"
                fwd, bwd = (True, not couplet) if not second_of_couplet else (False, True)
                klass = "primary" if corridor % 2 == 0 else "secondary"
                missing = 0.0
                bend = 0.0
            else:
                living = rng.random() < p.living_share
                kmh = 20.0 if living else float(rng.choice(p.local_kmh))
                one_way = rng.random() < p.one_way_share
                fwd, bwd = (True, not one_way) if k % 2 else (not one_way, True)
                klass = "living_street" if living else "residential"
                label = f"{ordinal} {'Street' if axis == 'row' else 'Road'}"
                missing = p.missing_share
                bend = p.bend_share
            names.append(label)
            parts.append(
                _Street(
                    a=line[:-1],
                    b=line[1:],
                    kmh=kmh,
                    fwd=fwd,
                    bwd=bwd,
                    klass=CLASS_CODE[klass],
                    name=len(names) - 1,
                    missing=missing,
                    bend=bend,
                )
            )

    a = np.concatenate([s.a for s in parts])
    b = np.concatenate([s.b for s in parts])
    n_links = len(a)
    per = [len(s.a) for s in parts]
    l_kmh = np.repeat([s.kmh for s in parts], per).astype(np.float32)
    l_fwd = np.repeat([s.fwd for s in parts], per)
    l_bwd = np.repeat([s.bwd for s in parts], per)
    l_class = np.repeat([s.klass for s in parts], per).astype(np.uint8)
    l_name = np.repeat([s.name for s in parts], per).astype(np.int32)
    keep = rng.random(n_links) >= np.repeat([s.missing for s in parts], per)
    bent = rng.random(n_links) < np.repeat([s.bend for s in parts], per)

    fx, fy = gx.ravel(), gy.ravel()
    ax, ay, bx, by = fx[a], fy[a], fx[b], fy[b]
    # A kink: the midpoint pushed sideways, perpendicular to the link.
    dx, dy = bx - ax, by - ay
    norm = np.hypot(dx, dy)
    push = rng.uniform(-p.bend_m, p.bend_m, n_links)
    mx = (ax + bx) / 2 - dy / norm * push
    my = (ay + by) / 2 + dx / norm * push

    a, b, l_fwd, l_bwd, bent = a[keep], b[keep], l_fwd[keep], l_bwd[keep], bent[keep]
    l_kmh, l_class, l_name = l_kmh[keep], l_class[keep], l_name[keep]
    ax, ay, bx, by, mx, my = ax[keep], ay[keep], bx[keep], by[keep], mx[keep], my[keep]
    n_links = len(a)
    n_pts = np.where(bent, 3, 2)
    way_ptr = np.zeros(n_links + 1, np.int64)
    np.cumsum(n_pts, out=way_ptr[1:])
    total = int(way_ptr[-1])
    px = np.empty(total)
    py = np.empty(total)
    pid = np.empty(total, np.int64)
    first, last = way_ptr[:-1], way_ptr[1:] - 1
    px[first], py[first], pid[first] = ax, ay, a
    px[last], py[last], pid[last] = bx, by, b
    mid = first[bent] + 1
    px[mid], py[mid] = mx[bent], my[bent]
    pid[mid] = rows * cols + np.arange(len(mid))  # shape points are never junctions

    ky = math.radians(1.0) * EARTH_RADIUS_M
    kx = ky * math.cos(math.radians(p.south_lat))
    ways = WaySet(
        node_id=pid,
        lat=p.south_lat + py / ky,
        lon=p.west_lon + px / kx,
        way_ptr=way_ptr,
        way_id=np.arange(n_links, dtype=np.int64),
        fwd_kmh=np.where(l_fwd, l_kmh, 0.0).astype(np.float32),
        bwd_kmh=np.where(l_bwd, l_kmh, 0.0).astype(np.float32),
        road_class=l_class,
        name_id=l_name,
        names=tuple(names),
    )
    return RoadNetwork.from_ways(ways, meta={"source": "synthetic", "plan": asdict(p)})


@dataclass(frozen=True)
class _Street:
    """One row or column of links with shared attributes."""

    a: NDArray[np.int64]
    b: NDArray[np.int64]
    kmh: float
    fwd: bool
    bwd: bool
    klass: int
    name: int
    missing: float
    bend: float
