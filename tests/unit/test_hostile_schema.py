"""A model's published schema cannot hang the worker: its regular expressions run on RE2.

The schema is the emulator's ``acme/hostile-pattern/edit``, read over HTTP as the operators
read RunComfy's: ``prompt`` carries ``^(\\w+\\s?)*$`` (nested quantifiers: the issue measured
61.6 CPU-s with Python's ``re`` for a 48-character prompt, doubling per character), ``tags``
the same as ``patternProperties``, ``style`` a lookahead no linear-time engine runs.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from airflow_provider_runcomfy.client import InvalidInputError, RunComfyClient
from airflow_provider_runcomfy.emulator import RunComfyEmulator
from airflow_provider_runcomfy.emulator.models import HOSTILE_PATTERN, HOSTILE_PATTERN_EDIT, LOOKAHEAD_PATTERN
from airflow_provider_runcomfy.models.catalog import (
    InputChecker,
    ModelLookup,
    SchemaUnavailableError,
    check_before_submit,
    read_model,
)
from airflow_provider_runcomfy.models.schema import compile_schema, input_problems, unevaluable_patterns

#: The prompt of the issue: 48 characters, and a comma ``\w+\s?`` cannot match.
ISSUE_PROMPT = "a watercolour portrait of my grandmother, please"
IMAGE = "https://images.example.com/in.png"

#: CPU seconds a child process may spend checking the hostile inputs. Generous (the check takes
#: microseconds; importing takes about a second); Python's ``re`` needs 61.6 s for the issue's prompt
#: alone, so a backtracking engine is killed here and the test fails loudly instead of hanging.
CPU_BUDGET_S = 20


@pytest.fixture
def client(runcomfy_emulator: RunComfyEmulator) -> RunComfyClient:
    return RunComfyClient(token=runcomfy_emulator.token, base_url=runcomfy_emulator.base_url)


def hostile_lookup(client: RunComfyClient) -> ModelLookup:
    return read_model(HOSTILE_PATTERN_EDIT, client.get_model)


def published(client: RunComfyClient) -> dict[str, Any]:
    schema = client.get_model(HOSTILE_PATTERN_EDIT).input_schema
    assert schema is not None
    return schema


def test_the_issue_prompt_is_refused_before_the_submit_and_nothing_is_paid(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        check_before_submit(
            HOSTILE_PATTERN_EDIT,
            {"prompt": ISSUE_PROMPT, "image_url": IMAGE},
            lambda: hostile_lookup(client),
            check_schema=True,
        )

    assert f"prompt: '{ISSUE_PROMPT}' does not match the pattern" in str(caught.value)
    assert runcomfy_emulator.journal.count("submit") == 0


def test_a_prompt_the_pattern_accepts_goes_through(client: RunComfyClient) -> None:
    checker = InputChecker(hostile_lookup(client))

    checker.check({"prompt": "a watercolour portrait of my grandmother please", "image_url": IMAGE})


def test_hostile_pattern_and_pattern_properties_end_within_a_cpu_budget(client: RunComfyClient) -> None:
    """In a child process with a CPU limit: a backtracking engine is killed, not waited for."""
    schema = published(client)
    script = textwrap.dedent(
        f"""
        import resource
        resource.setrlimit(resource.RLIMIT_CPU, ({CPU_BUDGET_S}, {CPU_BUDGET_S}))
        from airflow_provider_runcomfy.models.schema import compile_schema, input_problems
        validator = compile_schema({schema!r})
        long_prompt = ({ISSUE_PROMPT!r} * 30)[:1000]  # the schema's maxLength
        for payload in (
            {{"prompt": {ISSUE_PROMPT!r}, "image_url": {IMAGE!r}}},
            {{"prompt": long_prompt, "image_url": {IMAGE!r}}},
            {{"prompt": "ok", "image_url": {IMAGE!r}, "tags": {{{ISSUE_PROMPT!r}: "x", "fine key": "y"}}}},
        ):
            print(input_problems(validator, payload))
        """
    )

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, (
        f"schema checks did not end within {CPU_BUDGET_S} CPU-s (return code {done.returncode}): "
        f"the pattern engine backtracks. {done.stderr[-2000:]}"
    )
    lines = done.stdout.splitlines()
    assert "does not match the pattern" in lines[0] and "does not match the pattern" in lines[1]
    assert f"tags.{ISSUE_PROMPT}: is not accepted here" in lines[2]
    assert "fine key" not in lines[2]


def test_unevaluated_properties_match_pattern_properties_on_re2_too() -> None:
    schema = {
        "type": "object",
        "properties": {"prompt": {"type": "string"}},
        "patternProperties": {HOSTILE_PATTERN: {"type": "string"}},
        "unevaluatedProperties": False,
    }
    validator = compile_schema(schema)

    assert input_problems(validator, {"prompt": "x", "fine key": "y"}) == []
    assert input_problems(validator, {"prompt": "x", ISSUE_PROMPT: "y"}) == [
        f"Unevaluated properties are not allowed ('{ISSUE_PROMPT}')"
    ]


def test_a_pattern_re2_cannot_run_is_named_and_skipped_and_the_rest_still_checked(
    client: RunComfyClient,
) -> None:
    schema = published(client)

    assert unevaluable_patterns(schema) == [
        f"style: the pattern {LOOKAHEAD_PATTERN!r} cannot be evaluated in linear time "
        "(invalid perl operator: (?!); this check is skipped"
    ]
    validator = compile_schema(schema)
    assert input_problems(validator, {"prompt": "ok", "image_url": IMAGE, "style": "forbidden"}) == []
    assert input_problems(validator, {"prompt": ISSUE_PROMPT, "image_url": IMAGE, "style": "forbidden"}) == [
        f"prompt: '{ISSUE_PROMPT}' does not match the pattern {HOSTILE_PATTERN!r}"
    ]


def test_a_skipped_pattern_is_warned_about_once_or_refused_when_asked(
    client: RunComfyClient, runcomfy_emulator: RunComfyEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    payload = {"prompt": "ok", "image_url": IMAGE, "style": "noir"}
    checker = InputChecker(hostile_lookup(client), log=logging.getLogger("t"))
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            checker.check(payload)
    warnings = [r.getMessage() for r in caplog.records if r.name == "t"]
    assert len(warnings) == 1
    assert "submitted partly checked" in warnings[0] and "style: the pattern" in warnings[0]

    strict = InputChecker(hostile_lookup(client), on_unavailable="fail")
    with pytest.raises(SchemaUnavailableError, match="cannot be fully checked, because style: the pattern"):
        strict.check(payload)
    assert runcomfy_emulator.journal.count("submit") == 0


@pytest.mark.parametrize(
    "pattern",
    [r"^(a)\1$", r"(?<=x)y", r"((a{100}){100}){100}", r"a{1001}"],
)
def test_patterns_re2_refuses_are_skipped_not_crashed(pattern: str) -> None:
    schema = {"type": "object", "properties": {"f": {"type": "string", "pattern": pattern}}}

    assert unevaluable_patterns(schema)[0].startswith("f: the pattern")
    assert input_problems(compile_schema(schema), {"f": "anything"}) == []
