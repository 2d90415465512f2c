"""What the emulated model does with a job: read its inputs when it runs, render its outputs.

RunComfy fetches a job's input images while it runs and fails the job when
one cannot be fetched; the emulator does the same, lazily, the first time
someone looks at a finished job (``settle``), so there is no background
work to schedule. Outputs are rendered when first downloaded.
"""

from __future__ import annotations

import asyncio
import logging
import re

from airflow_provider_runcomfy.emulator.inputs import InputFetchError, fetch_input
from airflow_provider_runcomfy.emulator.render import SAMPLES, OutputSpec, render_output, sample_png
from airflow_provider_runcomfy.emulator.state import EmulatorState, Job, Phase

log = logging.getLogger(__name__)

_SAMPLE_PATH = re.compile(r"/samples/([a-z]+)\.png")
_FILE_PATH = re.compile(r"/files/([A-Za-z0-9_-]{1,128})/(\d+)\.png")


class Worker:
    """Inputs and outputs of the jobs in ``state``."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    async def settle(self, job: Job) -> Phase:
        """The job's phase, fetching its inputs first if it has finished and its outcome hangs on them."""
        phase = job.phase(self.state.clock())
        if phase in ("succeeded", "failed") and job.failure is None and job.inputs is None:
            task = job.inputs_task
            if task is None or task.get_loop() is not asyncio.get_running_loop():
                task = job.inputs_task = asyncio.ensure_future(self.fetch_inputs(job))
            await asyncio.shield(task)  # a client hanging up must not cancel the fetch
            phase = job.phase(self.state.clock())
        return phase

    async def fetch_inputs(self, job: Job) -> None:
        """Read every input image now (RunComfy would, when the job runs); a failure fails the job."""
        config = self.state.config
        pictures = []
        try:
            for field, url in job.plan.image_urls:
                pictures.append(
                    await fetch_input(
                        field,
                        url,
                        own_bases=job.own_bases,
                        read_own_path=self.read_own_path,
                        fetch_timeout=config.fetch_timeout_seconds,
                        max_bytes=config.max_input_bytes,
                    )
                )
        except InputFetchError as exc:
            job.input_error = str(exc)
            return
        except Exception as exc:  # a bug here must fail the job, not hang every poll of it
            log.exception("emulator: fetching the inputs of %s failed", job.request_id)
            job.input_error = f"could not fetch the inputs: emulator error {exc!r}"
            return
        job.inputs = pictures

    async def read_own_path(self, path: str) -> bytes:
        """An input URL that points at this emulator, read without HTTP; ``LookupError`` if absent."""
        if (match := _SAMPLE_PATH.fullmatch(path)) and match.group(1) in SAMPLES:
            return await asyncio.to_thread(sample_png, match.group(1))
        if match := _FILE_PATH.fullmatch(path):
            job = self.state.get(match.group(1))
            index = int(match.group(2))
            if job is not None and await self.settle(job) == "succeeded" and index < job.plan.num_outputs:
                return await self.render(job, index)
        raise LookupError(f"no file at {path}")

    async def render(self, job: Job, index: int) -> bytes:
        """Output ``index`` of a finished job (``render_output`` caches it: a client may download again)."""
        pictures = job.inputs or []
        picture = pictures[index % len(pictures)] if pictures else None
        plan = job.plan
        spec = OutputSpec(plan.prompt, plan.seed, index, plan.aspect, plan.long_side)
        return await asyncio.to_thread(render_output, picture, spec)
