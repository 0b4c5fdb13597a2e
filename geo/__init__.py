"""Geospatial engine: coordinates, areas, road network, travel times, geocoding (pure)."""
