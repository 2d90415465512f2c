"""Peak memory of keeping a 50 MB output: is the copy really streamed?

Starts the emulator (in this process), has it produce one output padded to
50 MB (rule ``output_bytes``), then copies that output to a ``file://``
``output_dir`` through the provider's storage code (``OutputStore.keep``, what
an operator with ``output_dir`` runs) in a **separate** process, and prints
that process's peak RSS before and after the copy. A streamed copy adds a few
MB at most; reading the file whole would add at least its 50 MB.

    .venv/bin/python bench/copy_memory.py [--bytes 50000000]

A benchmark, not a test: it prints numbers and asserts only that the copy is whole.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(url: str, request_id: str, output_dir: str) -> None:
    """The measured process: import what a worker has, then copy one output."""
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_runcomfy.outputs.storage import OutputStore, resolve_output_dir

    resolve_output_dir(output_dir)  # everything a worker loads, before the baseline is taken
    ObjectStoragePath(output_dir).fs  # noqa: B018 -- load the filesystem too
    before = peak_rss_mb()
    started = time.monotonic()
    # The emulator serves its outputs over plain http on loopback: allowed only because the
    # API itself is there (the output-URL policy, docs/outputs.md).
    api_base_url = url.split("/files/")[0]
    store = OutputStore(
        ObjectStoragePath(output_dir), max_output_bytes=200_000_000, api_base_url=api_base_url
    )
    (copy,) = store.keep(request_id, [url])
    seconds = time.monotonic() - started
    print(json.dumps({"before_mb": before, "after_mb": peak_rss_mb(), "seconds": seconds, **copy.as_dict()}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bytes", type=int, default=50_000_000, help="size of the output (default 50 MB)")
    parser.add_argument(
        "--child", nargs=3, metavar=("URL", "REQUEST_ID", "OUTPUT_DIR"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0

    from airflow_provider_runcomfy.client import RunComfyClient
    from airflow_provider_runcomfy.emulator import RunComfyEmulator

    with RunComfyEmulator(queue_seconds=0, run_seconds=0) as emu, tempfile.TemporaryDirectory() as tmp:
        emu.add_rule(output_bytes=args.bytes)
        with RunComfyClient(emu.token, base_url=emu.base_url) as client:
            request_id = client.submit(
                "blackforestlabs/flux-1-kontext/pro/edit", {"prompt": "bench", "image_url": emu.sample_url()}
            ).request_id
            (url,) = client.wait_for_result(request_id, poll_interval=0.05).output_urls
        proc = subprocess.run(
            [sys.executable, __file__, "--child", url, request_id, f"file://{tmp}"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if proc.returncode != 0:
            print(proc.stdout + proc.stderr, file=sys.stderr)
            return 1
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        kept = Path(result["uri"].removeprefix("file://"))
        assert kept.stat().st_size == result["bytes"], "the copy is not whole"

    print(f"output          : {result['bytes'] / 1e6:.1f} MB, sha256 {result['sha256'][:16]}...")
    print(
        f"copy time       : {result['seconds']:.2f} s ({result['bytes'] / 1e6 / result['seconds']:.0f} MB/s)"
    )
    print(f"peak RSS before : {result['before_mb']:.1f} MB (Airflow SDK and the provider imported)")
    print(f"peak RSS after  : {result['after_mb']:.1f} MB")
    print(f"copy added      : {result['after_mb'] - result['before_mb']:.1f} MB to the peak")
    return 0


if __name__ == "__main__":
    sys.exit(main())
