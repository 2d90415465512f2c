"""``output_dir`` is proven writable before anything is paid for, and a storage failure after the job is clear.

The probe is real I/O on real filesystems: a directory nobody may create files
in (``/sys``, read-only to every user, root included), a plain-http URL (fsspec
reads http but cannot write it), a path blocked by a file; the failure after
a job is a real emulator job whose copy cannot be written.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_provider_runcomfy.client import RunComfyClient
from airflow_provider_runcomfy.client.errors import OutputStorageError
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.outputs.storage import OutputStore, resolve_output_dir, task_directory

FLUX = "blackforestlabs/flux-1-kontext/pro/edit"


def test_a_writable_output_dir_passes_and_keeps_no_probe(tmp_path: Path) -> None:
    resolve_output_dir(tmp_path / "new" / "folder")
    assert (tmp_path / "new" / "folder").is_dir()
    assert list((tmp_path / "new" / "folder").iterdir()) == []
    resolve_output_dir("memory://runcomfy-probe-test/out")


def test_a_read_only_directory_is_refused_before_the_submit() -> None:
    with pytest.raises(
        OutputStorageError, match=r"output_dir 'file:///sys' cannot be written.*nothing was submitted"
    ):
        resolve_output_dir("/sys")


def test_an_http_output_dir_is_refused_before_the_submit(runcomfy_emulator: RunComfyEmulator) -> None:
    with pytest.raises(OutputStorageError, match="cannot be written.*http:// and https:// cannot be written"):
        resolve_output_dir(f"{runcomfy_emulator.base_url}/outputs")
    assert runcomfy_emulator.journal.count("submit") == 0


def test_a_path_blocked_by_a_file_is_refused_and_named(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file, not a folder")
    with pytest.raises(OutputStorageError, match="taken/out"):
        resolve_output_dir(tmp_path / "taken" / "out")


def test_a_storage_failure_after_the_job_is_a_clear_error_naming_the_directory(
    runcomfy_emulator: RunComfyEmulator, tmp_path: Path
) -> None:
    runcomfy_emulator.set_config(queue_seconds=0, run_seconds=0)
    with RunComfyClient(runcomfy_emulator.token, base_url=runcomfy_emulator.base_url) as client:
        request_id = client.submit(
            FLUX, {"prompt": "p", "image_url": runcomfy_emulator.sample_url()}
        ).request_id
        urls = client.wait_for_result(request_id, poll_interval=0.05).output_urls
    folder = task_directory(tmp_path, dag_id="d", run_id="r", task_id="t", map_index=None)
    Path(folder.path).parent.mkdir(parents=True)
    Path(folder.path).write_text("something else took the task's folder")  # e.g. a full or broken disk
    store = OutputStore(folder, api_base_url=runcomfy_emulator.base_url)

    with pytest.raises(OutputStorageError) as caught:
        store.keep(request_id, urls)

    error = caught.value
    assert str(folder) in error.message
    assert request_id in error.message and "without paying again" in error.message
    assert not error.retryable
    assert error.request_id == request_id
