"""Tests of the Python client SDK (icp.client) and the simulator, against the real server."""
