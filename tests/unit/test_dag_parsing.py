"""What a DAG author meets at parse time: bad literal inputs are import errors, templates wait for render."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

from airflow_provider_runcomfy.operators.runcomfy import (
    FluxKontextProEditOperator,
    NanoBananaEditOperator,
    RunComfyModelOperator,
)
from airflow_provider_runcomfy.triggers.runcomfy import RunComfyRequestTrigger

REPO = Path(__file__).resolve().parents[2]

HEADER = """
import pendulum
from airflow.sdk import DAG
from airflow_provider_runcomfy.operators.runcomfy import (
    FluxKontextProEditOperator, NanoBananaEditOperator, RunComfyModelOperator,
)
with DAG("d", schedule=None, start_date=pendulum.datetime(2026, 1, 1)):
"""


def parse(tmp_path: Path, body: str) -> DagBag:
    (tmp_path / "dag.py").write_text(HEADER + textwrap.indent(textwrap.dedent(body), "    "))
    return DagBag(dag_folder=str(tmp_path), safe_mode=False)


def test_a_bad_literal_input_is_a_dag_import_error_naming_field_and_allowed_values(tmp_path: Path) -> None:
    bag = parse(
        tmp_path,
        """
        NanoBananaEditOperator(task_id="t", prompt="p", image_urls=["https://x/a.png"], aspect_ratio="square")
        """,
    )
    (error,) = bag.import_errors.values()
    assert "aspect_ratio" in error
    assert "'square' is not one of auto, 21:9" in error


def test_a_public_http_image_url_is_an_import_error(tmp_path: Path) -> None:
    bag = parse(
        tmp_path, 'FluxKontextProEditOperator(task_id="t", prompt="p", image_url="http://example.com/a.png")'
    )
    (error,) = bag.import_errors.values()
    assert "image_url" in error


def test_templated_inputs_are_checked_after_rendering_not_at_parse_time(tmp_path: Path) -> None:
    bag = parse(
        tmp_path,
        """
        FluxKontextProEditOperator(task_id="t", prompt="p", image_url="{{ params.url }}", seed="{{ x }}")
        RunComfyModelOperator(task_id="u", model_id="{{ params.model }}", input={"anything": 1})
        """,
    )
    assert bag.import_errors == {}
    assert set(bag.dags["d"].task_ids) == {"t", "u"}


def test_mapped_operators_parse(tmp_path: Path) -> None:
    bag = parse(
        tmp_path,
        """
        NanoBananaEditOperator.partial(task_id="t", prompt="p").expand(
            image_urls=["https://x/a.png", "https://x/b.png"]
        )
        """,
    )
    assert bag.import_errors == {}


def test_every_example_dag_parses_without_errors() -> None:
    bag = DagBag(dag_folder=str(REPO / "dags_examples"), safe_mode=False)
    assert bag.import_errors == {}
    assert len(bag.dags) >= 4


def test_operators_defer_by_default_and_expose_inputs_as_template_fields() -> None:
    flux = FluxKontextProEditOperator(task_id="f", prompt="p", image_url="https://x/a.png")
    nano = NanoBananaEditOperator(task_id="n", prompt="p", image_urls="https://x/a.png")
    generic = RunComfyModelOperator(task_id="g", model_id="acme/video/gen", input={"prompt": "p"})
    assert all(op.deferrable for op in (flux, nano, generic))
    assert {"prompt", "image_url", "seed", "aspect_ratio"} <= set(flux.template_fields)
    assert {"prompt", "image_urls", "num_images"} <= set(nano.template_fields)
    assert {"model_id", "input"} <= set(generic.template_fields)
    assert nano.build_input() == {"prompt": "p", "image_urls": ["https://x/a.png"]}


def test_rendered_integer_fields_become_integers() -> None:
    nano = NanoBananaEditOperator(
        task_id="n", prompt="p", image_urls=["https://x/a.png"], num_images="{{ x }}"
    )
    nano.num_images = "3"  # what Jinja renders
    assert nano.build_input()["num_images"] == 3


def test_a_non_positive_poll_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="poll_interval"):
        RunComfyModelOperator(task_id="g", model_id="a/b", input={}, poll_interval=0)


def test_trigger_round_trips_through_its_serialized_kwargs_without_a_token() -> None:
    trigger = RunComfyRequestTrigger(
        request_id="req-1", runcomfy_conn_id="rc", poll_interval=2.5, deadline=1234.5, model_id="a/b"
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_runcomfy.triggers.runcomfy.RunComfyRequestTrigger"
    rebuilt = RunComfyRequestTrigger(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert set(kwargs) == {
        "request_id",
        "runcomfy_conn_id",
        "poll_interval",
        "deadline",
        "model_id",
        "max_consecutive_errors",
        "cancel_on_kill",
    }


def test_the_batch_operator_is_importable_where_the_design_names_it() -> None:
    from airflow_provider_runcomfy.operators import runcomfy
    from airflow_provider_runcomfy.operators.batch import RunComfyBatchOperator

    assert runcomfy.RunComfyBatchOperator is RunComfyBatchOperator
