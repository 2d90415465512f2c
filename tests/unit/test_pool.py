"""Many triggers in one triggerer: one shared client per connection, bounded, closed by the last one out.

Triggers are driven directly in one event loop (as the triggerer runs them)
against the emulator over real HTTP; what is counted is what a user would see:
clients built, TCP connections opened, requests the emulator received.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from airflow_provider_runcomfy.client import AsyncRunComfyClient, RetryPolicy, RunComfyClient, TransportError
from airflow_provider_runcomfy.client._pool import shared_client, shared_clients
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.hooks.runcomfy import RunComfyHook
from airflow_provider_runcomfy.models import FLUX_KONTEXT_PRO_EDIT
from airflow_provider_runcomfy.triggers.runcomfy import RunComfyRequestTrigger


def set_connection(
    monkeypatch: pytest.MonkeyPatch, emu: RunComfyEmulator, host: str | None = None, **extra: Any
) -> None:
    conn = {"conn_type": "runcomfy", "host": host or emu.base_url, "password": emu.token, "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_RUNCOMFY_DEFAULT", json.dumps(conn))


@pytest.fixture
def client(runcomfy_emulator: RunComfyEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunComfyClient]:
    set_connection(monkeypatch, runcomfy_emulator)
    with RunComfyClient(runcomfy_emulator.token, base_url=runcomfy_emulator.base_url) as sync_client:
        yield sync_client


def submit_many(client: RunComfyClient, emu: RunComfyEmulator, count: int) -> list[str]:
    payload = {"prompt": "p", "image_url": emu.sample_url()}
    return [client.submit(FLUX_KONTEXT_PRO_EDIT, payload).request_id for _ in range(count)]


async def run_to_event(trigger: RunComfyRequestTrigger) -> dict[str, Any]:
    events = [event.payload async for event in trigger.run()]
    assert len(events) == 1
    return events[0]


async def waiting_in_background(request_id: str) -> asyncio.Future[dict[str, Any]]:
    """A trigger on the job, run in the background; returns once it holds a place on a shared client."""
    holding = sum(info.users for info in shared_clients())
    wait = asyncio.ensure_future(run_to_event(RunComfyRequestTrigger(request_id, poll_interval=0.1)))
    deadline = time.monotonic() + 60  # generous: a place is taken within milliseconds
    while sum(info.users for info in shared_clients()) <= holding and not wait.done():
        if time.monotonic() > deadline:
            wait.cancel()
            pytest.fail("the trigger took no place on a shared client within 60 s")
        await asyncio.sleep(0.05)  # poll interval of a condition wait, not a synchronisation
    return wait


class Counter:
    """Counts calls to a method (and how many run at once), calling through to the real one."""

    def __init__(self) -> None:
        self.calls = 0
        self.running = 0
        self.most_at_once = 0

    def wrap_async(self, method: Callable[..., Any]) -> Callable[..., Any]:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            try:
                return await method(*args, **kwargs)
            finally:
                self.running -= 1

        return counted


@pytest.fixture
def clients_built(monkeypatch: pytest.MonkeyPatch) -> list[AsyncRunComfyClient]:
    built: list[AsyncRunComfyClient] = []
    original = AsyncRunComfyClient.__init__

    def counting_init(self: AsyncRunComfyClient, *args: Any, **kwargs: Any) -> None:
        built.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(AsyncRunComfyClient, "__init__", counting_init)
    return built


def count_tcp_connections(monkeypatch: pytest.MonkeyPatch) -> Counter:
    counter = Counter()
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "create_connection", counter.wrap_async(loop.create_connection))
    return counter


async def test_many_triggers_in_one_loop_share_one_client_and_a_few_connections(
    client: RunComfyClient,
    runcomfy_emulator: RunComfyEmulator,
    clients_built: list[AsyncRunComfyClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_connection(monkeypatch, runcomfy_emulator, max_in_flight=8)
    runcomfy_emulator.add_rule(hold=True)
    request_ids = submit_many(client, runcomfy_emulator, 40)
    connections = count_tcp_connections(monkeypatch)

    waits = asyncio.gather(
        *(run_to_event(RunComfyRequestTrigger(rid, poll_interval=0.1)) for rid in request_ids)
    )
    deadline = time.monotonic() + 120
    while runcomfy_emulator.journal.count("status") < 3 * 40:  # each trigger polled several times...
        assert not waits.done() and time.monotonic() < deadline, "the triggers stopped polling"
        await asyncio.sleep(0.05)  # poll interval of a condition wait, not a synchronisation
    runcomfy_emulator.release()
    events = await asyncio.wait_for(waits, 120)

    assert [event["status"] for event in events] == ["succeeded"] * 40
    assert len(clients_built) == 1
    assert 1 <= connections.calls <= 8  # ...over a few connections (the bound), not one per trigger


async def test_the_shared_client_is_closed_when_the_last_trigger_ends(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator
) -> None:
    first, second = submit_many(client, runcomfy_emulator, 2)
    runcomfy_emulator.add_rule(hold=True)  # runs only once the test releases it
    (slow,) = submit_many(client, runcomfy_emulator, 1)

    slow_wait = await waiting_in_background(slow)
    await asyncio.gather(
        *(run_to_event(RunComfyRequestTrigger(rid, poll_interval=0.1)) for rid in (first, second))
    )
    (info,) = shared_clients()
    assert info.users == 1  # the two quick ones left; the slow one keeps the client open
    assert info.base_url == runcomfy_emulator.base_url

    assert runcomfy_emulator.release(slow) == [slow]
    assert (await slow_wait)["status"] == "succeeded"
    assert shared_clients() == []
    assert info.client._http.is_closed


async def test_a_cancelled_trigger_gives_its_place_back(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator
) -> None:
    runcomfy_emulator.add_rule(hold=True)  # queued until the test ends: never finishes under it
    (request_id,) = submit_many(client, runcomfy_emulator, 1)
    wait = await waiting_in_background(request_id)
    assert shared_clients()[0].users == 1

    wait.cancel()  # what the triggerer does when the task is cleared or the triggerer stops
    with pytest.raises(asyncio.CancelledError):
        await wait
    assert shared_clients() == []


async def test_a_changed_connection_gets_a_new_client_while_running_waits_finish_on_the_old(
    client: RunComfyClient,
    runcomfy_emulator: RunComfyEmulator,
    clients_built: list[AsyncRunComfyClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runcomfy_emulator.add_rule(hold=True)  # both waits run until the test releases their jobs
    old_job, new_job = submit_many(client, runcomfy_emulator, 2)
    old_wait = await waiting_in_background(old_job)

    # The user edits the connection (same emulator, reached by another name) while a wait runs.
    set_connection(
        monkeypatch, runcomfy_emulator, host=runcomfy_emulator.base_url.replace("127.0.0.1", "localhost")
    )
    new_wait = await waiting_in_background(new_job)
    assert sorted(info.base_url.split("//")[1].split(":")[0] for info in shared_clients()) == [
        "127.0.0.1",
        "localhost",
    ]

    assert runcomfy_emulator.release() == [old_job, new_job]
    assert [(await old_wait)["status"], (await new_wait)["status"]] == ["succeeded", "succeeded"]
    assert len(clients_built) == 2
    assert shared_clients() == []
    assert runcomfy_emulator.token not in repr(shared_clients()) + repr(clients_built)


async def test_the_connection_is_read_once_per_trigger_run_not_per_poll(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = Counter()
    counted = reads.wrap_async(RunComfyHook.aget_connection)  # a classmethod, bound to the class
    monkeypatch.setattr(RunComfyHook, "aget_connection", classmethod(lambda cls, conn_id: counted(conn_id)))
    runcomfy_emulator.add_rule(hold=True)
    (request_id,) = submit_many(client, runcomfy_emulator, 1)

    wait = asyncio.ensure_future(run_to_event(RunComfyRequestTrigger(request_id, poll_interval=0.05)))
    deadline = time.monotonic() + 60
    while runcomfy_emulator.journal.count("status", request_id=request_id) < 5:  # five polls of a held job
        assert not wait.done() and time.monotonic() < deadline, "the trigger stopped polling"
        await asyncio.sleep(0.05)  # poll interval of a condition wait, not a synchronisation
    runcomfy_emulator.release(request_id)
    event = await asyncio.wait_for(wait, 120)

    assert event["status"] == "succeeded"
    assert reads.calls == 1


async def test_requests_in_flight_never_exceed_the_bound(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_connection(monkeypatch, runcomfy_emulator, max_in_flight=3)
    request_ids = submit_many(client, runcomfy_emulator, 12)
    runcomfy_emulator.add_fault("status", "delay", times=None, seconds=0.3)  # every poll is slow
    connections = count_tcp_connections(monkeypatch)

    events = await asyncio.gather(
        *(run_to_event(RunComfyRequestTrigger(rid, poll_interval=0.05)) for rid in request_ids)
    )

    assert {event["status"] for event in events} == {"succeeded"}
    arrivals = sorted(entry.at for entry in runcomfy_emulator.journal.of("status"))
    at_once = max(sum(1 for other in arrivals if start <= other < start + 0.25) for start in arrivals)
    assert at_once == 3  # the bound was reached, and never passed
    assert connections.calls <= 3


async def test_a_request_that_finds_no_place_in_time_never_leaves(
    runcomfy_emulator: RunComfyEmulator,
) -> None:
    async with shared_client(
        "runcomfy_default",
        runcomfy_emulator.token,
        base_url=runcomfy_emulator.base_url,
        read_timeout=0.2,  # httpx's pool timeout follows the read timeout
        retry=RetryPolicy(max_attempts=2, initial_backoff=0.01),
        max_in_flight=1,
    ) as shared:
        await shared._in_flight.acquire()  # the one place is taken, as by a request that hangs
        with pytest.raises(TransportError, match="PoolTimeout") as caught:
            await shared.submit(
                FLUX_KONTEXT_PRO_EDIT, {"prompt": "p", "image_url": runcomfy_emulator.sample_url()}
            )
        shared._in_flight.release()
    assert not caught.value.request_sent  # so even a submit is retried (here: once) safely
    assert runcomfy_emulator.journal.count() == 0


async def test_a_trigger_on_kill_borrows_the_same_client(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator, clients_built: list[AsyncRunComfyClient]
) -> None:
    runcomfy_emulator.add_rule(hold=True)  # queued until the test ends: never finishes under it
    waiting, killed = submit_many(client, runcomfy_emulator, 2)
    wait = await waiting_in_background(waiting)

    # With no task instance the guard reads no task state (no triggerer channel needed) and cancels.
    await RunComfyRequestTrigger(killed, poll_interval=0.1).on_kill()

    assert client.get_result(killed).status.value == "cancelled"
    assert len(clients_built) == 1
    wait.cancel()
    with pytest.raises(asyncio.CancelledError):
        await wait
