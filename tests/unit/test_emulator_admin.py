"""The admin API is safe to run on a shared host: no web page can steer the emulator.

A page in a browser on the same machine can send simple cross-origin
requests (text/plain POSTs) and, through DNS rebinding, reach 127.0.0.1
under its own host name. Each of those is refused; the test harness's own
calls (JSON, loopback Host, no Origin) go through.
"""

from __future__ import annotations

import httpx
import pytest

from airflow_provider_runcomfy.emulator import RemoteEmulator, RunComfyEmulator

FAULT = {"endpoint": "status", "kind": "drop"}


def test_a_text_plain_post_is_refused(emu, admin):
    import json

    response = admin.post("/faults", content=json.dumps(FAULT), headers={"Content-Type": "text/plain"})

    assert response.status_code == 403
    assert "application/json" in response.json()["detail"]
    assert emu.faults == []


def test_a_post_without_a_body_type_is_refused(emu, admin):
    emu.set_config(queue_seconds=42)

    assert admin.post("/reset").status_code == 403
    assert emu.get_config()["queue_seconds"] == 42


@pytest.mark.parametrize(
    "host", ["attacker.example", "attacker.example:8188", "127.0.0.1.nip.io", "app.localhost"]
)
def test_a_foreign_host_header_is_refused_even_for_reads(emu, admin, host):
    for response in (
        admin.get("/journal", headers={"Host": host}),
        admin.post("/config", json={"token": "stolen"}, headers={"Host": host}),
    ):
        assert response.status_code == 403
        assert "loopback host" in response.json()["detail"]
    assert emu.token != "stolen"


@pytest.mark.parametrize("origin", ["https://attacker.example", "null", "http://10.0.0.5:8080"])
def test_a_foreign_origin_is_refused(emu, admin, origin):
    response = admin.post("/faults", json=FAULT, headers={"Origin": origin})

    assert response.status_code == 403
    assert emu.faults == []


@pytest.mark.parametrize(
    ("host", "origin"),
    [
        ("localhost", None),
        ("[::1]:1", None),
        ("127.0.0.1", "http://127.0.0.1:3000"),
        ("127.0.0.1", "http://localhost"),
    ],
)
def test_loopback_hosts_and_origins_are_accepted(emu, admin, host, origin):
    headers = {"Host": host} | ({"Origin": origin} if origin else {})

    assert admin.post("/faults", json=FAULT, headers=headers).status_code == 200
    assert len(emu.faults) == 1


def test_the_api_itself_is_not_restricted_by_host(emu, api):
    # RunComfy's endpoints keep answering under any name (e.g. a docker-compose service name).
    response = api.get("/v1/models/google/nano-banana/edit", headers={"Host": "emulator:8188"})

    assert response.status_code == 200


def test_with_an_admin_token_every_admin_call_needs_it():
    with RunComfyEmulator(admin_token="s3cret-admin") as emulator:
        base = emulator.base_url + "/_emulator"
        assert httpx.get(base + "/journal").status_code == 403
        assert httpx.get(base + "/journal", headers={"X-Emulator-Admin-Token": "wrong"}).status_code == 403
        with_token = {"X-Emulator-Admin-Token": "s3cret-admin"}
        assert httpx.get(base + "/journal", headers=with_token).status_code == 200
        # The token also lets a non-loopback Host through (an emulator served with --allow-remote).
        assert (
            httpx.get(base + "/jobs", headers={**with_token, "Host": "ci-emulator:8188"}).status_code == 200
        )
        assert "admin_token" not in httpx.get(base + "/config", headers=with_token).json()

        with RemoteEmulator(emulator.base_url, admin_token="s3cret-admin") as remote:
            remote.add_fault("status", "http", status=503)
            assert [f.kind for f in remote.faults] == ["http"]
        with RemoteEmulator(emulator.base_url) as anonymous, pytest.raises(ValueError, match="admin token"):
            anonymous.reset()
