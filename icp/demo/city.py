"""The demo city: central Helsinki's agencies, areas, stations, units and sensors, seeded over REST.

Everything is placed inside the shipped OpenStreetMap extract (``data/osm``, 24.9352–24.9534 E,
60.1642–60.1791 N), so every unit can drive to every incident on real roads. Stations stand at real
street addresses, found by the server's own gazetteer when they are created. The neighbouring
city's fire service keeps a forward station at the western edge of the extract; its jurisdiction
lies to the west, so its units come only as mutual aid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from icp.demo.rest import Rest

HELSINKI = [[24.90, 60.15], [25.00, 60.15], [25.00, 60.20], [24.90, 60.20], [24.90, 60.15]]
ESPOO = [[24.60, 60.13], [24.90, 60.13], [24.90, 60.25], [24.60, 60.25], [24.60, 60.13]]
# Fire districts of the Helsinki fire service, inside the extract (west, north-east, south-east).
ZONES = {
    "kamppi": ("Kamppi district", [[24.930, 60.160], [24.9415, 60.160], [24.9415, 60.182], [24.930, 60.182]]),
    "kluuvi": ("Kluuvi district", [[24.9415, 60.1685], [24.960, 60.1685], [24.960, 60.182], [24.9415, 60.182]]),
    "kaartinkaupunki": ("Kaartinkaupunki district",
                        [[24.9415, 60.160], [24.960, 60.160], [24.960, 60.1685], [24.9415, 60.1685]]),
}


@dataclass(frozen=True)
class Place:
    """A named point: an address (as the gazetteer writes it) and its coordinates."""

    label: str
    lat: float
    lon: float

    @property
    def location(self) -> dict[str, float]:
        return {"lat": self.lat, "lon": self.lon}


AGENCIES: list[dict[str, Any]] = [
    {"id": "espoo-fire", "name": "Espoo Fire and Rescue (neighbouring city)", "kind": "fire"},
    {"id": "hki-fire", "name": "Helsinki Fire and Rescue", "kind": "fire",
     "mutual_aid": [{"partner_id": "espoo-fire", "capabilities": ["ENGINE", "LADDER", "RESCUE"], "margin_s": 90}]},
    {"id": "hki-ems", "name": "Helsinki Emergency Medical Services", "kind": "ems"},
    {"id": "hki-police", "name": "Helsinki Police", "kind": "police"},
    {"id": "hki-utility", "name": "Helsinki City Utilities", "kind": "utility"},
]
JURISDICTIONS = {"hki-fire": HELSINKI, "hki-ems": HELSINKI, "hki-police": HELSINKI, "hki-utility": HELSINKI,
                 "espoo-fire": ESPOO}

# Stations: created by address (the server geocodes it).
STATIONS: list[dict[str, str]] = [
    {"id": "st-kluuvi", "agency_id": "hki-fire", "name": "Fire station Kluuvi", "address": "Kaivokatu 1"},
    {"id": "st-kaarti", "agency_id": "hki-fire", "name": "Fire station Kaartinkaupunki", "address": "Unioninkatu 20"},
    {"id": "st-ems", "agency_id": "hki-ems", "name": "Ambulance base Bulevardi", "address": "Bulevardi 1"},
    {"id": "st-police", "agency_id": "hki-police", "name": "Police station Vilhonkatu", "address": "Vilhonkatu 4"},
    {"id": "st-utility", "agency_id": "hki-utility", "name": "Utilities depot Kalevankatu",
     "address": "Kalevankatu 1"},
    {"id": "st-espoo", "agency_id": "espoo-fire", "name": "Espoo forward station Yrjönkatu",
     "address": "Yrjönkatu 21"},
]

# (id, call sign, agency, capabilities, station, staffing)
UNITS: list[tuple[str, str, str, list[str], str, int]] = [
    ("E11", "E11", "hki-fire", ["ENGINE"], "st-kluuvi", 4),
    ("E12", "E12", "hki-fire", ["ENGINE"], "st-kluuvi", 4),
    ("L11", "L11", "hki-fire", ["LADDER"], "st-kluuvi", 3),
    ("R11", "R11", "hki-fire", ["RESCUE"], "st-kluuvi", 4),
    ("E21", "E21", "hki-fire", ["ENGINE"], "st-kaarti", 4),
    ("E22", "E22", "hki-fire", ["ENGINE", "TANKER"], "st-kaarti", 4),
    ("L21", "L21", "hki-fire", ["LADDER"], "st-kaarti", 3),
    ("H21", "H21", "hki-fire", ["HAZMAT", "RESCUE"], "st-kaarti", 4),
    ("C1", "C1", "hki-fire", ["COMMAND"], "st-kaarti", 1),
    ("M1", "M1", "hki-ems", ["ALS", "BLS"], "st-ems", 2),
    ("M2", "M2", "hki-ems", ["ALS", "BLS"], "st-ems", 2),
    ("M3", "M3", "hki-ems", ["BLS"], "st-ems", 2),
    ("M4", "M4", "hki-ems", ["BLS"], "st-ems", 2),
    ("M5", "M5", "hki-ems", ["ALS", "BLS"], "st-ems", 2),
    ("M6", "M6", "hki-ems", ["BLS"], "st-ems", 2),
    ("P1", "P1", "hki-police", ["PATROL"], "st-police", 2),
    ("P2", "P2", "hki-police", ["PATROL"], "st-police", 2),
    ("P3", "P3", "hki-police", ["PATROL"], "st-police", 2),
    ("P4", "P4", "hki-police", ["PATROL"], "st-police", 2),
    ("P5", "P5", "hki-police", ["PATROL"], "st-police", 2),
    ("P6", "P6", "hki-police", ["PATROL"], "st-police", 2),
    ("P7", "P7", "hki-police", ["PATROL"], "st-police", 2),
    ("U1", "U1", "hki-utility", ["UTILITY"], "st-utility", 2),
    ("U2", "U2", "hki-utility", ["UTILITY"], "st-utility", 2),
    ("ES-E1", "ES-E1", "espoo-fire", ["ENGINE"], "st-espoo", 4),
    ("ES-E2", "ES-E2", "espoo-fire", ["ENGINE"], "st-espoo", 4),
    ("ES-L1", "ES-L1", "espoo-fire", ["LADDER"], "st-espoo", 3),
    ("ES-R1", "ES-R1", "espoo-fire", ["RESCUE"], "st-espoo", 4),
    ("ES-C1", "ES-C1", "espoo-fire", ["COMMAND"], "st-espoo", 1),
    ("E13", "E13", "hki-fire", ["ENGINE"], "st-kluuvi", 4),
]

# Buildings with smoke detectors (three each, one per floor): real addresses in the extract,
# far enough apart (> 150 m, the smoke correlation radius) to be separate incidents.
BUILDINGS: list[Place] = [
    Place("Mannerheimintie 5, 00100 Helsinki", 60.16952, 24.94000),
    Place("Mikonkatu 1, 00100 Helsinki", 60.16803, 24.94582),
    Place("Pohjoisesplanadi 11-13, 00170 Helsinki", 60.16813, 24.95225),
    Place("Lönnrotinkatu 1, Helsinki", 60.16741, 24.94119),
    Place("Uudenmaankatu 1-5, Helsinki", 60.16543, 24.94320),
    Place("Pieni Roobertinkatu 1-3, Helsinki", 60.16434, 24.94742),
]
GUNSHOT_SENSORS: list[Place] = [
    Place("Rautatientori", 60.17100, 24.94300), Place("Esplanadi park", 60.16770, 24.94800),
    Place("Kamppi, Annankatu", 60.16880, 24.93650), Place("Kauppatori", 60.16750, 24.95250),
]
# Places where a shot may be heard: near the sensors.
GUNSHOT_SPOTS: list[Place] = [
    Place("Kaisaniemenkatu", 60.17150, 24.94650), Place("Aleksanterinkatu", 60.16891, 24.94631),
    Place("Eteläesplanadi", 60.16690, 24.94700), Place("Yrjönkatu", 60.16834, 24.93908),
    Place("Kasarmikatu", 60.16567, 24.94781),
]
FLOOD_SENSORS: list[Place] = [
    Place("Kauppatori quay", 60.16700, 24.95300), Place("Eteläranta", 60.16594, 24.95253),
    Place("Kaisaniemi park", 60.17650, 24.94700),
]
TRAFFIC_CAMERAS: list[Place] = [
    Place("Mannerheimintie / Kaivokatu", 60.17050, 24.94030),
    Place("Aleksanterinkatu / Mikonkatu", 60.16890, 24.94600),
    Place("Bulevardi / Erottajankatu", 60.16600, 24.94400),
    Place("Pohjoisesplanadi / Unioninkatu", 60.16780, 24.95100),
]

USERS: list[tuple[str, str, str | None, str]] = [
    # (username, role, agency, who it is)
    ("dispatcher", "supervisor", None, "the emergency response centre: every agency"),
    ("fire", "dispatcher", "hki-fire", "Helsinki fire dispatcher"),
    ("police", "dispatcher", "hki-police", "Helsinki police dispatcher"),
    ("espoo", "dispatcher", "espoo-fire", "the neighbouring city's fire dispatcher: answers mutual-aid requests"),
]


def sensors() -> list[dict[str, Any]]:
    """The sensor registry: every sensor with its fixed place (SensorThings observations are placed by it)."""
    out: list[dict[str, Any]] = []
    for b, building in enumerate(BUILDINGS, 1):
        for floor in (1, 2, 3):
            out.append({"id": f"smoke-b{b}-f{floor}", "source": "smoke-net", "kind": "smoke",
                        "name": f"Smoke detector, {building.label}, floor {floor}", "location": building.location})
    for n, place in enumerate(GUNSHOT_SENSORS, 1):
        out.append({"id": f"acoustic-{n}", "source": "acoustic-net", "kind": "gunshot",
                    "name": f"Acoustic gunshot sensor, {place.label}", "location": place.location})
    for n, place in enumerate(FLOOD_SENSORS, 1):
        out.append({"id": f"flood-{n}", "source": "water-levels", "kind": "flood",
                    "name": f"Water level, {place.label}", "location": place.location,
                    "observed_property": "water_level", "unit": "m",
                    "datastream_ids": [f"flood-{n}-level"], "thing_ids": [f"gauge-{n}"]})
    for n, place in enumerate(TRAFFIC_CAMERAS, 1):
        out.append({"id": f"camera-{n}", "source": "traffic-cameras", "kind": "camera",
                    "name": f"Traffic camera, {place.label}", "location": place.location})
    return out


def _feature(area_id: str, ring: list[list[float]], name: str) -> dict[str, Any]:
    closed = ring if ring[0] == ring[-1] else [*ring, ring[0]]
    return {"type": "Feature", "id": area_id, "properties": {"name": name},
            "geometry": {"type": "Polygon", "coordinates": [closed]}}


async def seed(api: Rest) -> dict[str, int]:
    """Create the whole city through the public API (an administrator's token); returns counts."""
    for agency in AGENCIES:
        await api.call("POST", "/api/v1/agencies", json=agency)
    for agency_id, ring in JURISDICTIONS.items():
        await api.call("POST", f"/api/v1/agencies/{agency_id}/areas?kind=jurisdiction",
                       json=_feature(f"{agency_id}-jurisdiction", ring, f"{agency_id} jurisdiction"))
    await api.call("POST", "/api/v1/agencies/hki-fire/areas?kind=zone", json={
        "type": "FeatureCollection",
        "features": [_feature(zone_id, ring, name) for zone_id, (name, ring) in ZONES.items()]})
    stations: dict[str, Mapping[str, Any]] = {}
    for place in STATIONS:
        stations[place["id"]] = await api.call("POST", "/api/v1/stations", json=place)
    for unit_id, call_sign, owner, caps, station_id, staffing in UNITS:
        await api.call("POST", "/api/v1/units", json={"id": unit_id, "call_sign": call_sign, "agency_id": owner,
                                                      "capabilities": caps, "station_id": station_id,
                                                      "staffing": staffing})
        await api.call("PATCH", f"/api/v1/units/{unit_id}", json={"position": stations[station_id]["location"]})
    registry = sensors()
    for sensor in registry:
        await api.call("POST", "/api/v1/sensors", json=sensor)
    return {"agencies": len(AGENCIES), "stations": len(STATIONS), "units": len(UNITS), "sensors": len(registry),
            "zones": len(ZONES)}
