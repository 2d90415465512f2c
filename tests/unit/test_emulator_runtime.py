"""Ways to run the emulator: in a thread, as a CLI process, as pytest fixtures, controlled remotely."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from airflow_provider_runcomfy.emulator import RemoteEmulator, RunComfyEmulator, create_app

pytest_plugins = ["pytester"]

FLUX = "blackforestlabs/flux-1-kontext/pro/edit"
FLUX_INPUT = {"prompt": "p", "image_url": "https://example.com/x.png"}


# -- RunComfyEmulator in a thread -------------------------------------------------------------------


def test_start_reports_the_real_port_and_stop_leaves_nothing_behind():
    """How fast start and stop are is measured by ``bench/timing_emulator.py``, not asserted here."""
    threads_before = set(threading.enumerate())
    emu = RunComfyEmulator(token="t").start()
    base_url = emu.base_url
    try:
        assert base_url.startswith("http://127.0.0.1:")
        assert int(base_url.rsplit(":", 1)[1]) > 0
        response = httpx.post(
            f"{base_url}/v1/models/{FLUX}", json=FLUX_INPUT, headers={"Authorization": "Bearer t"}
        )
        assert response.status_code == 200
    finally:
        emu.stop()

    assert set(threading.enumerate()) == threads_before
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base_url}/_emulator/health", timeout=2)
    with pytest.raises(RuntimeError, match="not running"):
        emu.base_url  # noqa: B018
    emu.stop()  # twice is harmless


def test_the_emulator_refuses_to_listen_beyond_loopback():
    with pytest.raises(ValueError, match="loopback"):
        RunComfyEmulator(host="0.0.0.0")


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="queue_secnds"):
        RunComfyEmulator(queue_secnds=1)


async def test_create_app_serves_any_asgi_server():
    app = create_app(token="asgi", queue_seconds=0, run_seconds=0)
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": "Bearer asgi"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://emulator.test", headers=headers
    ) as client:
        request_id = (await client.post(f"/v1/models/{FLUX}", json=FLUX_INPUT)).json()["request_id"]
        result = (await client.get(f"/v1/requests/{request_id}/result")).json()

    assert result["output"] == {"image": f"http://emulator.test/files/{request_id}/0.png"}


# -- the CLI ------------------------------------------------------------------------------------------


class CliProcess:
    """A ``runcomfy-emulator`` subprocess whose output lines are read by a thread, so waits are bounded."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, prefix: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            self.output.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no line starting {prefix!r} within {timeout} s; output: {self.output}")

    def all_output(self) -> str:
        """Everything printed, once the process has ended."""
        self._reader.join(10)
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return "".join(self.output)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError("the emulator did not exit after the signal") from None


@pytest.fixture
def cli_processes():
    started: list[CliProcess] = []
    yield started
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait(5)


def test_the_cli_serves_until_sigterm_and_never_prints_the_token(cli_processes, tmp_path):
    script = Path(sys.executable).with_name("runcomfy-emulator")
    ready_file = tmp_path / "emulator.url"
    cli = CliProcess(
        [
            str(script),
            "--port",
            "0",
            "--queue-seconds",
            "0",
            "--run-seconds",
            "0",
            "--ready-file",
            str(ready_file),
        ],
        env={"RUNCOMFY_EMULATOR_TOKEN": "cli-secret-token"},
    )
    cli_processes.append(cli)

    line = cli.wait_for("RunComfy emulator listening on ")
    base_url = line.split()[4]
    assert base_url.startswith("http://127.0.0.1:")
    assert "token from RUNCOMFY_EMULATOR_TOKEN" in line
    assert ready_file.read_text().strip() == base_url
    assert '"password":"<the token>"' in cli.wait_for("Point Airflow at it: ")

    headers = {"Authorization": "Bearer cli-secret-token"}
    request_id = httpx.post(f"{base_url}/v1/models/{FLUX}", json=FLUX_INPUT, headers=headers).json()[
        "request_id"
    ]
    assert (
        httpx.get(f"{base_url}/v1/requests/{request_id}/status", headers=headers).json()["status"]
        == "completed"
    )
    assert httpx.get(f"{base_url}/v1/requests/{request_id}/status").status_code == 401

    assert cli.stop(signal.SIGTERM) == 0
    output = cli.all_output()
    assert "cli-secret-token" not in output
    assert output.rstrip().endswith("RunComfy emulator stopped")
    assert not ready_file.exists()


def test_python_dash_m_runs_the_same_cli_and_stops_on_ctrl_c(cli_processes):
    cli = CliProcess(
        [
            sys.executable,
            "-m",
            "airflow_provider_runcomfy.emulator",
            "--port",
            "0",
            "--failed-status-word",
            "failed",
        ]
    )
    cli_processes.append(cli)

    line = cli.wait_for("RunComfy emulator listening on ")
    # The built-in default is documented, so the banner says it (a token of your own is never printed).
    assert "token: emulator-token, the built-in default" in line
    assert "runcomfy-emulator --help" in line
    hint = cli.wait_for("Point Airflow at it: ")
    assert f'"host":"{line.split()[4]}","password":"emulator-token"' in hint
    with RemoteEmulator(line.split()[4]) as remote:
        assert remote.get_config()["failed_status_word"] == "failed"
    assert cli.stop(signal.SIGINT) == 0


def test_the_cli_help_is_the_guide_a_wheel_user_has():
    done = subprocess.run(
        [sys.executable, "-m", "airflow_provider_runcomfy.emulator", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert done.returncode == 0
    assert "the built-in default 'emulator-token'" in done.stdout
    assert "export AIRFLOW_CONN_RUNCOMFY_DEFAULT=" in done.stdout
    assert "RemoteEmulator" in done.stdout
    assert "--admin-token" in done.stdout
    assert "://" not in done.stdout.replace("http://127.0.0.1:8188", "")  # no docs URL to chase


def test_the_cli_refuses_a_non_loopback_host():
    done = subprocess.run(
        [sys.executable, "-m", "airflow_provider_runcomfy.emulator", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "--allow-remote" in done.stderr


# -- pytest fixtures ----------------------------------------------------------------------------------


def test_the_conn_env_fixture_points_airflow_at_the_emulator(runcomfy_emulator, runcomfy_emulator_conn_env):
    value = os.environ["AIRFLOW_CONN_RUNCOMFY_DEFAULT"]

    assert runcomfy_emulator_conn_env == {"AIRFLOW_CONN_RUNCOMFY_DEFAULT": value}
    assert json.loads(value) == {
        "conn_type": "runcomfy",
        "host": runcomfy_emulator.base_url,
        "password": runcomfy_emulator.token,
    }
    assert runcomfy_emulator.airflow_conn_env("my_runcomfy").keys() == {"AIRFLOW_CONN_MY_RUNCOMFY"}


def test_the_fixtures_work_in_a_users_own_test_suite(pytester):
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture(scope="session")
        def runcomfy_emulator_config():
            return {"queue_seconds": 0, "run_seconds": 0, "token": "suite-token"}
        """
    )
    pytester.makepyfile(
        """
        import os
        import httpx

        def test_first_makes_a_mess(runcomfy_emulator, runcomfy_emulator_conn_env):
            assert "suite-token" in os.environ["AIRFLOW_CONN_RUNCOMFY_DEFAULT"]
            runcomfy_emulator.add_fault("status", "drop", times=None)
            runcomfy_emulator.set_config(queue_seconds=99)
            headers = {"Authorization": "Bearer suite-token"}
            url = runcomfy_emulator.base_url + "/v1/models/vendor/model"
            assert httpx.post(url, json={}, headers=headers).status_code == 200

        def test_second_starts_clean(runcomfy_emulator):
            assert runcomfy_emulator.jobs == [] and runcomfy_emulator.faults == []
            assert len(runcomfy_emulator.journal) == 0
            assert runcomfy_emulator.get_config()["queue_seconds"] == 0
        """
    )

    outcome = pytester.runpytest_inprocess("-p", "no:cacheprovider")

    outcome.assert_outcomes(passed=2)


def test_loading_the_plugin_imports_nothing_heavy():
    code = (
        "import sys, airflow_provider_runcomfy.emulator.pytest_plugin, airflow_provider_runcomfy.emulator; "
        "heavy = ('airflow', 'fastapi', 'starlette', 'uvicorn', 'httpx', 'png'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.strip() == "[]"


# -- RemoteEmulator -----------------------------------------------------------------------------------


def test_remote_controls_steer_an_emulator_over_http(runcomfy_emulator):
    emu = runcomfy_emulator
    api = httpx.Client(base_url=emu.base_url, headers={"Authorization": f"Bearer {emu.token}"}, timeout=10)
    with RemoteEmulator(emu.base_url, token=emu.token) as remote, api:
        remote.wait_ready()
        config = remote.set_config(queue_seconds=0, run_seconds=0)
        assert config["queue_seconds"] == 0
        assert "token" not in config
        assert "extra_tokens" not in config

        rule = remote.add_rule(prompt_contains="fail me", fail_message="remote rule")
        assert remote.rules == [rule]
        failed_id = api.post(f"/v1/models/{FLUX}", json={**FLUX_INPUT, "prompt": "fail me"}).json()[
            "request_id"
        ]
        assert api.get(f"/v1/requests/{failed_id}/result").json()["error"]["message"] == "remote rule"

        fault = remote.add_fault("status", "http", status=429, retry_after=1)
        assert remote.faults[0].id == fault.id
        assert api.get(f"/v1/requests/{failed_id}/status").status_code == 429
        assert remote.faults[0].hits == 1

        assert [job.request_id for job in remote.jobs] == [failed_id]
        assert remote.job(failed_id).error == "remote rule"
        assert remote.job("nope") is None
        assert remote.expire(failed_id) is True
        assert api.get(f"/v1/requests/{failed_id}/status").status_code == 404

        journal = remote.journal
        assert [e.endpoint for e in journal] == ["submit", "result", "status", "status"]
        assert journal.last("status").status_code == 404
        assert journal.last("status").headers["authorization"] == "Bearer <token>"  # never the token itself

        with pytest.raises(ValueError, match="kind"):
            remote.add_fault("status", "explode")
        remote.clear_faults()
        remote.clear_rules()
        assert remote.faults == []
        assert remote.rules == []
        assert remote.airflow_conn_env() == emu.airflow_conn_env()

        remote.reset()
        assert remote.jobs == []
        assert len(remote.journal) == 0
    assert len(emu.journal) == 0  # none of the admin calls above was journaled


def test_the_cli_takes_an_admin_token_from_the_environment_and_never_prints_it(cli_processes):
    cli = CliProcess(
        [sys.executable, "-m", "airflow_provider_runcomfy.emulator", "--port", "0"],
        env={"RUNCOMFY_EMULATOR_ADMIN_TOKEN": "admin-secret"},
    )
    cli_processes.append(cli)
    base_url = cli.wait_for("RunComfy emulator listening on ").split()[4]

    with RemoteEmulator(base_url, admin_token="admin-secret") as remote:
        remote.set_config(queue_seconds=7)
    with (
        RemoteEmulator(base_url, admin_token="wrong") as intruder,
        pytest.raises(ValueError, match="admin token"),
    ):
        intruder.set_config(queue_seconds=0)
    assert cli.stop(signal.SIGTERM) == 0
    assert "admin-secret" not in cli.all_output()


# -- jobs held in the queue until the test releases them ------------------------------------------


def test_a_held_job_stays_queued_until_released_then_runs(runcomfy_emulator):
    emu = runcomfy_emulator
    emu.set_config(queue_seconds=0, run_seconds=0)  # the clock alone would finish it at once
    emu.add_rule(prompt_contains="hold me", hold=True)
    api = httpx.Client(base_url=emu.base_url, headers={"Authorization": f"Bearer {emu.token}"}, timeout=10)
    with api:
        held = api.post(f"/v1/models/{FLUX}", json={**FLUX_INPUT, "prompt": "hold me"}).json()["request_id"]
        behind = api.post(f"/v1/models/{FLUX}", json={**FLUX_INPUT, "prompt": "hold me"}).json()["request_id"]
        free = api.post(f"/v1/models/{FLUX}", json=FLUX_INPUT).json()["request_id"]
        status = api.get(f"/v1/requests/{behind}/status").json()
        assert (status["status"], status["queue_position"]) == ("in_queue", 1)
        assert emu.job(held).phase == "in_queue"
        assert emu.job(free).phase == "succeeded"  # the rule holds only what it matches

        assert emu.release(held) == [held]
        assert emu.release(held) == []  # released once
        assert emu.job(held).phase == "succeeded"
        assert api.get(f"/v1/requests/{behind}/status").json()["queue_position"] == 0
        assert emu.release() == [behind]
        assert api.get(f"/v1/requests/{behind}/result").json()["status"] == "succeeded"


def test_a_held_job_can_be_cancelled_and_is_not_released_afterwards(runcomfy_emulator):
    emu = runcomfy_emulator
    emu.add_rule(hold=True)
    api = httpx.Client(base_url=emu.base_url, headers={"Authorization": f"Bearer {emu.token}"}, timeout=10)
    with api:
        request_id = api.post(f"/v1/models/{FLUX}", json=FLUX_INPUT).json()["request_id"]
        assert api.post(f"/v1/requests/{request_id}/cancel").json()["outcome"] == "cancelled"
    assert emu.release() == []
    assert emu.job(request_id).phase == "cancelled"


def test_remote_controls_hold_and_release(runcomfy_emulator):
    emu = runcomfy_emulator
    api = httpx.Client(base_url=emu.base_url, headers={"Authorization": f"Bearer {emu.token}"}, timeout=10)
    with RemoteEmulator(emu.base_url, token=emu.token) as remote, api:
        remote.add_rule(hold=True)
        request_id = api.post(f"/v1/models/{FLUX}", json=FLUX_INPUT).json()["request_id"]
        held = remote.job(request_id)
        assert held.phase == "in_queue"
        assert held.finished_at == float("inf")  # no end while held: JSON's null, read back as inf
        assert remote.release("unknown") == []
        assert remote.release() == [request_id]
        assert remote.job(request_id).finished_at < float("inf")
