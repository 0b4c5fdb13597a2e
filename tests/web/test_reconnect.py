"""Connection loss and recovery: the node goes away under an open console and comes back."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from tests.process import serving
from tests.web.conftest import DemoServer, login

pytestmark = pytest.mark.slow


def test_the_console_says_connection_lost_then_resumes(demo: DemoServer, browser: Any) -> None:
    page = login(browser, demo.url)
    assert page.is_hidden("#conn-banner")
    token = demo.token("dispatcher", agency="hki-police")
    demo.stop()  # the node goes away (its WebSockets close with 1001)
    banner = page.wait_for_selector("#conn-banner", state="visible")
    assert "Connection lost" in banner.inner_text()
    assert "connection lost" in page.inner_text("#conn-status")
    # The same database served again on the same port: `icp serve` this time.
    env_db = {"ICP_DATABASE_URL": demo.db_url, "ICP_DATA_DIR": str(demo.data_dir)}
    from tests.process import icp_env

    with serving(icp_env(**env_db), demo.port):
        page.wait_for_selector("#conn-banner", state="hidden", timeout=40_000)
        page.wait_for_selector("#conn-status.online")
        # Live again: an incident opened now appears without a reload.
        request = urllib.request.Request(demo.url + "/api/v1/incidents", method="POST", data=json.dumps({
            "type": "gunshot", "priority": 2, "location": {"lat": 60.1700, "lon": 24.9450}}).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            incident = json.loads(response.read())
        page.wait_for_selector(f"#queue [data-incident='{incident['id']}']")
        assert not page.errors
        page.context.close()
