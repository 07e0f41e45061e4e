"""``driftline serve`` as a process on a real broker, beside a running worker: lookups from
the replica equal what the worker published, /predict scores like the worker, errors are
clear, /readyz turns true once the replica has caught up; and a schemathesis run of the
service's own OpenAPI document."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from driftline.benchmarks.serve_process import ServeProcess
from driftline.core.spec import FeatureSpec
from driftline.engine.kafka.admin import TopicSpec, ensure_topics
from driftline.engine.kafka.worker import WorkerSettings
from driftline.event_producer import produce
from driftline.simulate import Population

pytestmark = pytest.mark.integration

httpx = pytest.importorskip("httpx")
schemathesis = pytest.importorskip("schemathesis")


def _events(n: int) -> list[dict[str, Any]]:
    population = Population(n_customers=80, seed=23)
    population.generate_history(days=30)
    return list(population.stream_events(max_events=n))


@pytest.fixture
def serve(worker_settings: WorkerSettings, tmp_path: Path) -> Iterator[ServeProcess]:
    s = worker_settings
    with ServeProcess(
        s.bootstrap_servers,
        input_topic=s.input_topic,
        output_topic=s.output_topic,
        group=s.group_id,
        registry=s.registry,
        model_name=s.model_name,
        log_path=tmp_path / "serve.log",
    ) as process:
        process.wait_answering(90)
        yield process


def _latest_published(messages: list[Any]) -> dict[str, dict[str, Any]]:
    """Each customer's prediction of its latest input record, as the worker published."""
    latest: dict[str, dict[str, Any]] = {}
    for message in messages:
        record = json.loads(message.value())
        held = latest.get(record["customer_id"])
        if held is None or record["source_offset"] >= held["source_offset"]:
            latest[record["customer_id"]] = record
    return latest


def _wait_for(client: Any, customer: str, event_id: str, timeout: float) -> dict[str, Any]:
    """The customer's answer once it shows ``event_id`` (the replica may trail the topic)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = client.get(f"/customers/{customer}")
        if answer.status_code == 200:
            body: dict[str, Any] = answer.json()
            if (body["prediction"] or {}).get("event_id") == event_id:
                return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{customer}: {event_id} not served in {timeout} s: {answer.text}")
        time.sleep(0.05)


def test_serve_answers_from_live_state_like_the_worker(
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    serve: ServeProcess,
    consume_all: Callable[..., list[Any]],
    worker_in_thread: Callable[..., Any],
) -> None:
    client = httpx.Client(base_url=serve.url, timeout=10)
    # No worker has created the changelog yet: not ready, and lookups say so.
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["ready"] is False
    waiting = client.get("/customers/c000001")
    assert waiting.status_code == 503 and "catching up" in waiting.json()["detail"]
    assert client.get("/healthz").status_code == 200

    worker_settings.explain = 2
    events = _events(1200)
    with worker_in_thread(worker_settings, spec):
        produce(worker_settings.bootstrap_servers, worker_settings.input_topic, events)
        messages = consume_all(worker_settings.output_topic, expected=len(events), timeout=90)
        assert len(messages) == len(events)
        serve.wait_ready(60)
        latest = _latest_published(messages)
        rows, published = [], []
        for customer, record in sorted(latest.items()):
            body = _wait_for(client, customer, record["event_id"], timeout=30)
            served = body["prediction"]
            for field in ("score", "decision", "threshold", "model_name", "model_version"):
                assert served[field] == record[field], (customer, field)
            assert served["source_offset"] == record["source_offset"]
            assert served["reasons"] == record["reasons"]
            # The state ends at the very event the prediction scored.
            assert body["consistent"] is True and body["state_offset"] == record["source_offset"]
            assert list(body["features"]) == spec.feature_names
            rows.append(body["features"])
            published.append(record["score"])

        # POST /predict with the served features scores what the worker scored, one row
        # at a time and as one batch.
        one = client.post("/predict", json=rows[0])
        assert one.status_code == 200, one.text
        assert one.json()["score"] == pytest.approx(published[0], abs=1e-9)
        batch = client.post("/predict", json=rows)
        assert batch.status_code == 200, batch.text
        scores = [r["score"] for r in batch.json()]
        assert scores == pytest.approx(published, abs=1e-9)
        served_versions = {r["model_version"] for r in batch.json()}
        assert served_versions == {r["model_version"] for r in latest.values()}

    unknown = client.get("/customers/nobody-at-all")
    assert unknown.status_code == 404 and "nobody-at-all" in unknown.json()["detail"]
    metrics = client.get("/metrics").text
    assert "driftline_serve_replica_staleness_seconds_count" in metrics
    assert "driftline_serve_ready 1.0" in metrics


@pytest.fixture(scope="module")
def live_serve(
    kafka_bootstrap: str,
    trained_registry: Path,
    spec: FeatureSpec,
    worker_in_thread: Callable[..., Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServeProcess]:
    """A worker that scored a few hundred events, and a ready service beside it."""
    suffix = uuid.uuid4().hex[:12]
    topics = {
        "input_topic": f"serve-events-{suffix}",
        "output_topic": f"serve-predictions-{suffix}",
        "dead_letter_topic": f"serve-dlq-{suffix}",
    }
    ensure_topics(
        kafka_bootstrap,
        [
            TopicSpec(topics["input_topic"], 2),
            TopicSpec(topics["output_topic"], 2),
            TopicSpec(topics["dead_letter_topic"], 1),
        ],
    )
    settings = WorkerSettings(
        bootstrap_servers=kafka_bootstrap,
        group_id=f"g-serve-{suffix}",
        registry=str(trained_registry),
        model_name="churn",
        metrics_port=0,
        **topics,
    )
    events = _events(400)
    with worker_in_thread(settings, spec):
        produce(kafka_bootstrap, settings.input_topic, events)
        with ServeProcess(
            kafka_bootstrap,
            input_topic=settings.input_topic,
            output_topic=settings.output_topic,
            group=settings.group_id,
            registry=trained_registry,
            log_path=tmp_path_factory.mktemp("serve") / "serve.log",
        ) as process:
            process.wait_ready(120)
            yield process


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"purchases_7d": "three"}', "$.purchases_7d"),
        (b'{"purchases_7d": 1, "no_such_feature": 2}', "no_such_feature"),
        (b"[]", "length"),
        (b'[{"plan_type": 3}]', "$[0].plan_type"),
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
    ],
    ids=["wrong-type", "unknown-field", "empty-batch", "batch-row-wrong-type", "not-json", "empty"],
)
def test_predict_refuses_malformed_bodies_with_a_clear_422(
    live_serve: ServeProcess, body: bytes, says: str
) -> None:
    answer = httpx.post(
        live_serve.url + "/predict", content=body, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 422, answer.text
    assert says in answer.json()["detail"]


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_the_service_keeps_its_openapi_contract(live_serve: ServeProcess, mode: str) -> None:
    """Requests generated from the running service's own OpenAPI document for every
    operation, valid (positive) and invalid (negative) ones: no 5xx, and every answer's
    status, content type and body as the document declares.  Bounded: 30 examples per
    operation and mode."""
    schema = schemathesis.openapi.from_url(live_serve.url + "/openapi.json")
    generation = schemathesis.GenerationMode(mode)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/customers/{customer_id}", "/predict"}
    for operation in operations:
        if mode == "negative" and operation.method.upper() == "GET" and "{" not in operation.path:
            continue  # no input to make invalid (health, readiness, metrics, the document)

        @given(case=operation.as_strategy(generation_mode=generation))
        @settings(
            max_examples=30,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case: Any) -> None:
            case.call_and_validate(base_url=live_serve.url)

        check()


def test_the_openapi_document_embeds_the_published_schemas(
    live_serve: ServeProcess, repo_root: Path
) -> None:
    """The running service documents its bodies with the very schemas in ``schemas/``."""

    def published(name: str) -> dict[str, Any]:
        schema = json.loads((repo_root / "schemas" / f"{name}.schema.json").read_text())
        del schema["$schema"], schema["$id"]
        return dict(schema)

    document = httpx.get(live_serve.url + "/openapi.json").json()
    predict = document["paths"]["/predict"]["post"]
    body = predict["requestBody"]["content"]["application/json"]["schema"]["anyOf"]
    assert body[0] == published("feature-row") == body[1]["items"]
    result = predict["responses"]["200"]["content"]["application/json"]["schema"]["anyOf"]
    assert result[0] == published("predict-result") == result[1]["items"]
    customer = document["paths"]["/customers/{customer_id}"]["get"]["responses"]["200"]
    assert customer["content"]["application/json"]["schema"] == published("customer-view")
