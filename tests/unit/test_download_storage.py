"""Where copies go and how they are reused, the manifest's tally and the contact sheet, without a DAG run.

``OutputStore`` copies real emulator outputs over real HTTP; the task's
``task_state_store`` is stood in for by a dict, which is all it is to the store.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import png
import pytest
from airflow.sdk import ObjectStoragePath

from airflow_provider_runcomfy.client import InvalidInputError, RunComfyClient
from airflow_provider_runcomfy.client.download import OutputTooLargeError
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.outputs.contact_sheet import (
    CELL,
    GAP,
    MARK,
    PLACEHOLDER,
    SheetRow,
    sheet_size,
    stored_image,
    write_contact_sheet,
)
from airflow_provider_runcomfy.outputs.manifest import tally
from airflow_provider_runcomfy.outputs.storage import (
    STATE_KEY,
    OutputStore,
    resolve_output_dir,
    safe_segment,
    task_directory,
    write_atomically,
)

FLUX = "blackforestlabs/flux-1-kontext/pro/edit"


class StateStore(dict):  # type: ignore[type-arg]
    """What ``context["task_state_store"]`` is to the store: ``get`` and ``set`` of JSON values."""

    def set(self, key: str, value: Any) -> None:
        self[key] = value


@pytest.fixture
def emu(runcomfy_emulator: RunComfyEmulator) -> RunComfyEmulator:
    runcomfy_emulator.set_config(queue_seconds=0, run_seconds=0)
    return runcomfy_emulator


@pytest.fixture
def job(emu: RunComfyEmulator) -> Callable[..., tuple[str, list[str]]]:
    """Runs a job on the emulator; returns its request id and output URLs."""

    def run(num_outputs: int = 1) -> tuple[str, list[str]]:
        emu.add_rule(num_outputs=num_outputs, output_kind="images")
        with RunComfyClient(emu.token, base_url=emu.base_url) as client:
            request_id = client.submit(FLUX, {"prompt": "p", "image_url": emu.sample_url()}).request_id
            return request_id, client.wait_for_result(request_id, poll_interval=0.05).output_urls

    return run


def test_run_ids_become_safe_path_segments():
    assert safe_segment("manual__2026-01-01T00:00:00+00:00") == "manual__2026-01-01T00_00_00_00_00"
    assert safe_segment("scheduled__x/../y") == "scheduled__x_.._y"
    assert safe_segment("..") == "_"
    assert safe_segment("edit.group_1-a") == "edit.group_1-a"


def test_the_task_directory_is_named_after_dag_run_task_and_map_index(tmp_path: Path):
    folder = task_directory(
        str(tmp_path), dag_id="d", run_id="manual__2026-01-01T00:00:00+00:00", task_id="edit", map_index=3
    )
    assert str(folder) == f"file://{tmp_path}/d/manual__2026-01-01T00_00_00_00_00/edit/3"
    assert str(task_directory(str(tmp_path), dag_id="d", run_id="r", task_id="t", map_index=None)).endswith(
        "/d/r/t/-1"
    )


def test_an_output_dir_no_filesystem_can_write_is_refused_plainly():
    with pytest.raises(InvalidInputError, match=r"no filesystem can write nosuchfs://"):
        resolve_output_dir("nosuchfs://bucket/prefix")
    with pytest.raises(InvalidInputError, match="output_dir is empty"):
        resolve_output_dir("  ")


def test_memory_storage_works_without_an_airflow_filesystem_for_it():
    path = resolve_output_dir("memory://runcomfy-unit/a")
    write_atomically(path / "x.txt", lambda sink: sink.write(b"hello"))
    assert ObjectStoragePath("memory://runcomfy-unit/a/x.txt").read_bytes() == b"hello"
    assert [p.name for p in path.iterdir()] == ["x.txt"]


def test_copies_are_kept_recorded_and_described(emu, job, tmp_path: Path):
    request_id, urls = job(num_outputs=2)
    state = StateStore()
    store = OutputStore(resolve_output_dir(tmp_path), state_store=state, api_base_url=emu.base_url)

    kept = store.keep(request_id, urls)

    assert [Path(c.uri).name for c in kept] == [f"{request_id}_0.png", f"{request_id}_1.png"]
    for copy, url in zip(kept, urls, strict=True):
        data = (tmp_path / Path(copy.uri).name).read_bytes()
        assert (copy.source_url, copy.bytes, copy.sha256) == (
            url,
            len(data),
            hashlib.sha256(data).hexdigest(),
        )
    assert state[STATE_KEY]["request_id"] == request_id
    assert sorted(state[STATE_KEY]["files"]) == [f"{request_id}_0", f"{request_id}_1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{request_id}_0.png", f"{request_id}_1.png"]


def test_a_later_try_reuses_whole_copies_and_replaces_a_changed_one(emu, job, tmp_path: Path):
    request_id, urls = job(num_outputs=2)
    state = StateStore()
    first = OutputStore(resolve_output_dir(tmp_path), state_store=state, api_base_url=emu.base_url).keep(
        request_id, urls
    )
    damaged = tmp_path / f"{request_id}_1.png"
    damaged.write_bytes(b"\x89PNG" + b"\0" * (first[1].bytes - 4))  # same size, other bytes
    emu.journal.clear()

    again = OutputStore(resolve_output_dir(tmp_path), state_store=state, api_base_url=emu.base_url).keep(
        request_id, urls
    )

    assert again == first
    assert [e.path for e in emu.journal.of("file")] == [
        urls[1].split(emu.base_url)[1]
    ]  # only the damaged one
    assert hashlib.sha256(damaged.read_bytes()).hexdigest() == first[1].sha256


def test_without_a_record_the_copy_is_downloaded_again(emu, job, tmp_path: Path):
    request_id, urls = job()
    OutputStore(resolve_output_dir(tmp_path), api_base_url=emu.base_url).keep(request_id, urls)
    OutputStore(resolve_output_dir(tmp_path), state_store=StateStore(), api_base_url=emu.base_url).keep(
        request_id, urls
    )
    assert emu.journal.count("file") == 2


def test_part_files_of_a_killed_try_are_removed(emu, job, tmp_path: Path):
    request_id, urls = job()
    (tmp_path / f"{request_id}_0.0123456789ab.part").write_bytes(b"half a picture")

    OutputStore(resolve_output_dir(tmp_path), api_base_url=emu.base_url).keep(request_id, urls)

    assert [p.name for p in tmp_path.iterdir()] == [f"{request_id}_0.png"]


def test_a_refused_output_leaves_nothing_behind(emu, job, tmp_path: Path):
    emu.add_rule(output_bytes=2_000_000)
    request_id, urls = job()
    store = OutputStore(resolve_output_dir(tmp_path), max_output_bytes=1_000_000, api_base_url=emu.base_url)

    with pytest.raises(OutputTooLargeError, match=f"Output 0 of RunComfy request {request_id}: "):
        store.keep(request_id, urls)
    assert list(tmp_path.iterdir()) == []


def test_tally_counts_items_and_kept_bytes():
    records = [
        {"status": "succeeded", "stored": [{"bytes": 10}, {"bytes": 5}]},
        {"status": "failed", "stored": []},
        {"status": "upstream_failed", "stored": []},
    ]
    assert tally(records) == {
        "images": 3,
        "succeeded": 1,
        "failed": 2,
        "outputs_stored": 2,
        "bytes_stored": 15,
    }


def png_bytes(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    png.Writer(width, height, greyscale=False).write(out, [list(rgb) * width for _ in range(height)])
    return out.getvalue()


def source(data: bytes) -> Callable[[], Any]:
    @contextmanager
    def open_image() -> Iterator[io.BytesIO]:
        yield io.BytesIO(data)

    return open_image


def test_the_contact_sheet_fits_pictures_and_marks_what_cannot_be_shown():
    red, blue = png_bytes(400, 200, (255, 0, 0)), png_bytes(50, 100, (0, 0, 255))
    rows = [
        SheetRow([source(red), source(blue), source(b"RIFF....WEBPVP8 ")], succeeded=True),
        SheetRow([source(red), None], succeeded=False),
    ]
    out = io.BytesIO()

    size = write_contact_sheet(out, rows)

    width, height, pixels, _ = png.Reader(bytes=out.getvalue()).asRGB8()
    grid = [list(row) for row in pixels]
    assert (width, height) == size == sheet_size(rows=2, columns=3)

    def at(column: int, row: int, dx: int = 0, dy: int = 0) -> tuple[int, ...]:
        x = GAP + MARK + GAP + column * (CELL + GAP) + CELL // 2 + dx
        y = GAP + row * (CELL + GAP) + CELL // 2 + dy
        return tuple(grid[y][x * 3 : x * 3 + 3])

    assert at(0, 0) == (255, 0, 0) and at(1, 0) == (0, 0, 255)
    assert at(0, 0, dy=CELL // 2 - 10) != (255, 0, 0)  # 2:1 fitted into the square: letterboxed
    assert at(2, 0, dx=20) == PLACEHOLDER  # a WebP cannot be decoded: grey placeholder
    assert at(1, 1) == (236, 236, 236)  # a failed item's missing output: an empty cell


def test_a_kept_copy_is_read_back_for_the_contact_sheet_wherever_output_dir_was(tmp_path: Path) -> None:
    """The sheet opens kept copies with the resolver that wrote them: a local file, and fsspec's memory://."""
    picture = png_bytes(8, 8, (0, 255, 0))
    (tmp_path / "a.png").write_bytes(picture)
    folder = resolve_output_dir("memory://sheet-test/kept")
    (folder / "b.png").write_bytes(picture)
    for uri in (f"file://{tmp_path}/a.png", "memory://sheet-test/kept/b.png"):
        with stored_image(uri)() as file:
            assert file.read() == picture
