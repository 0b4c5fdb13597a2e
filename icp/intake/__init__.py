"""Sensor intake, the pure half: CAP 1.2, OGC SensorThings and native JSON alerts to one report."""
