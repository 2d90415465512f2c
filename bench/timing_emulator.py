"""How fast the bundled emulator starts, stops, answers at scale and renders outputs.

Not a test: speed belongs here, where a slow machine prints a slower figure instead of failing
a test. ``tests/unit/test_emulator_runtime.py`` checks that start and stop work; this prints
what ``docs/emulator.md`` quotes:

- start and stop of ``RunComfyEmulator`` in a thread (imports warmed);
- per-request latency with N jobs all held in the queue (a ``hold`` rule: the worst case for
  queue positions), one client in a loop: submit, a status poll of every job, a status poll
  of the last 100 jobs; and the process's peak memory with the journal of all that;
- the time to download an output for the first time (it is rendered then), at the default
  ``image_long_side`` and at 64 px.

    .venv/bin/python bench/timing_emulator.py                       # --jobs 100,10000 --rounds 20 --renders 20
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import httpx

from airflow_provider_runcomfy.emulator import RunComfyEmulator

FLUX = "blackforestlabs/flux-1-kontext/pro/edit"


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return (
        f"median {statistics.median(ordered) * 1000:7.2f} ms   mean {statistics.mean(ordered) * 1000:7.2f} ms"
        f"   p95 {p95 * 1000:7.2f} ms"
    )


def start_stop(rounds: int) -> None:
    import uvicorn  # noqa: F401  - imports warmed: the figures are the emulator's own

    starts, stops = [], []
    for _ in range(rounds):
        began = time.perf_counter()
        emulator = RunComfyEmulator(token="t").start()
        starts.append(time.perf_counter() - began)
        began = time.perf_counter()
        emulator.stop()
        stops.append(time.perf_counter() - began)
    print(f"start, {rounds} rounds:  {summary(starts)}")
    print(f"stop,  {rounds} rounds:  {summary(stops)}")


def timed(call: object) -> float:
    began = time.perf_counter()
    call()  # type: ignore[operator]
    return time.perf_counter() - began


def at_scale(jobs: int) -> None:
    with RunComfyEmulator(token="t") as emulator:
        emulator.add_rule(hold=True)  # every job stays queued: positions cost the most
        body = {"prompt": "p", "image_url": emulator.sample_url()}
        with httpx.Client(base_url=emulator.base_url, headers={"Authorization": "Bearer t"}) as http:
            ids: list[str] = []
            submits = []
            for _ in range(jobs):
                began = time.perf_counter()
                response = http.post(f"/v1/models/{FLUX}", json=body)
                submits.append(time.perf_counter() - began)
                ids.append(response.json()["request_id"])
            every = [
                timed(lambda rid=rid: http.get(f"/v1/requests/{rid}/status").raise_for_status())
                for rid in ids
            ]
            last = [
                timed(lambda rid=rid: http.get(f"/v1/requests/{rid}/status").raise_for_status())
                for rid in ids[-100:]
            ]
        entries = len(emulator.journal)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{jobs} jobs held in the queue, one client:")
    print(f"  submit:                          {summary(submits)}")
    print(f"  status poll, every job:          {summary(every)}")
    print(f"  status poll, last 100 jobs:      {summary(last)}")
    print(f"  journal entries: {entries}; this process's peak RSS so far: {peak_mb:.0f} MB")


def renders(count: int, long_side: int | None) -> None:
    config = {"image_long_side": long_side} if long_side else {}
    with RunComfyEmulator(token="t", queue_seconds=0, run_seconds=0, **config) as emulator:
        with httpx.Client(base_url=emulator.base_url, headers={"Authorization": "Bearer t"}) as http:
            first = []
            for n in range(count):
                body = {"prompt": f"render {n}", "image_url": emulator.sample_url()}
                rid = http.post(f"/v1/models/{FLUX}", json=body).json()["request_id"]
                url = http.get(f"/v1/requests/{rid}/result").json()["output"]["image"]
                first.append(timed(lambda url=url: httpx.get(url).raise_for_status()))
        side = emulator.get_config()["image_long_side"]
    print(f"first download of an output ({side} px long side), {count} outputs: {summary(first)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="start/stop cycles (default 20)")
    parser.add_argument("--jobs", default="100,10000", help="job counts to measure at (default 100,10000)")
    parser.add_argument("--renders", type=int, default=20, help="outputs rendered per size (default 20)")
    args = parser.parse_args()
    start_stop(max(1, min(args.rounds, 200)))
    for jobs in (int(n) for n in args.jobs.split(",")):
        at_scale(max(100, min(jobs, 50_000)))
    renders(max(1, min(args.renders, 500)), None)
    renders(max(1, min(args.renders, 500)), 64)


if __name__ == "__main__":
    main()
