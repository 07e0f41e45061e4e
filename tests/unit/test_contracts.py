"""The published JSON Schemas against the code: same files, same verdicts.

``schemas/*.schema.json`` is what other teams validate with, so a value the schema
accepts and the worker dead-letters (or the reverse) is a broken promise.  These tests
check (a) the committed files are exactly what the structs generate, (b) on a corpus of
cases the event schema and ``decode_one`` agree, value by value, but for a short list of
documented differences, and (c) what the worker writes (predictions, dead-letter headers,
retrain requests) validates against its schema.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from jsonschema import Draft202012Validator, FormatChecker

from driftline.commands import schemas as schemas_command
from driftline.contracts import CONTRACTS, all_schemas, check_schemas, render, write_schemas
from driftline.core.drift.trigger import DriftedFeature, RetrainRequest
from driftline.core.events import (
    DEFAULT_MAX_EVENT_BYTES,
    MAX_EPOCH_MS,
    MIN_EPOCH_MS,
    CustomerEvent,
    InvalidEvent,
    decode_one,
)
from driftline.core.predictions import DeadLetterHeaders, Prediction
from driftline.corpus import bad_cases, epoch_ms, valid_events

# --------------------------------------------------------------------------- RFC 3339
#
# jsonschema checks "date-time" only when the optional rfc3339-validator package is
# installed; without it FormatChecker() lets every string pass, silently.  The test brings
# its own checker (RFC 3339 section 5.6, the grammar JSON Schema refers to) so the result
# does not depend on what else happens to be installed.

_DATE_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:[Zz]|[+-](\d{2}):(\d{2}))",
    re.ASCII,
)
_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def is_rfc3339_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True  # formats only constrain strings
    match = _DATE_TIME.fullmatch(value)
    if match is None:
        return False
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    if not 1 <= month <= 12:
        return False
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    days = 29 if month == 2 and leap else _DAYS[month - 1]
    if not (1 <= day <= days and hour <= 23 and minute <= 59 and second <= 60):
        return False
    offset_hour, offset_minute = match.group(7), match.group(8)
    return offset_hour is None or (int(offset_hour) <= 23 and int(offset_minute) <= 59)


def format_checker() -> FormatChecker:
    checker = FormatChecker()  # its own copy of the checkers: registering is local
    checker.checks("date-time")(is_rfc3339_date_time)
    return checker


@pytest.fixture(scope="module")
def committed(repo_root: Path) -> dict[str, dict[str, Any]]:
    """The schema files as committed (what other teams actually get)."""
    return {
        name: json.loads((repo_root / "schemas" / name).read_text(encoding="utf-8"))
        for name in all_schemas()
    }


def validator(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(schema, format_checker=format_checker())


# --------------------------------------------------------------------------- (a) files


def test_committed_schema_files_are_what_the_code_generates(repo_root: Path) -> None:
    problems = check_schemas(repo_root / "schemas")
    assert problems == [], "run `driftline schemas` and commit:\n" + "\n".join(problems)


def test_each_schema_is_standalone_draft_2020_12_with_docs_and_examples(
    committed: dict[str, dict[str, Any]],
) -> None:
    for name, schema in committed.items():
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"].endswith("/" + name)
        assert schema["title"] and schema["description"] and schema["examples"]
        text = json.dumps(schema)
        assert '"$ref"' not in text and '"$defs"' not in text, f"{name} is not standalone"
        undocumented = [p for p, s in schema["properties"].items() if not s.get("description")]
        assert undocumented == [], f"{name}: no description for {undocumented}"


def test_examples_are_valid_for_both_the_schema_and_the_code(
    committed: dict[str, dict[str, Any]],
) -> None:
    for contract in CONTRACTS:
        schema = committed[contract.file_name]
        for example in schema["examples"]:
            validator(schema).validate(example)
            raw = json.dumps(example).encode()
            if contract.struct is CustomerEvent:
                decode_one(raw)  # the event decoder checks more than the struct
            else:
                msgspec.json.decode(raw, type=contract.struct)


def test_nested_properties_are_documented_too(committed: dict[str, dict[str, Any]]) -> None:
    """An array of structs (the retrain request's drifted_features) is part of the contract
    as much as a top-level field."""

    def undocumented(node: Any, where: str) -> list[str]:
        if isinstance(node, list):
            return [u for i, item in enumerate(node) for u in undocumented(item, where)]
        if not isinstance(node, dict):
            return []
        found = [
            f"{where}.{name}"
            for name, sub in node.get("properties", {}).items()
            if not sub.get("description")
        ]
        for key, value in node.items():
            if key != "examples":
                found += undocumented(value, f"{where}/{key}" if key != "properties" else where)
        return found

    for name, schema in committed.items():
        assert undocumented(schema, name) == [], name


def test_the_schemas_command_writes_then_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    schemas_command.add_arguments(parser)
    assert schemas_command.HELP.splitlines()[0]
    out = tmp_path / "published"

    def run(*argv: str) -> int:
        return schemas_command.run(parser.parse_args(["--out", str(out), *argv]))

    assert run("--check") == 1  # nothing there yet
    assert "missing" in capsys.readouterr().err
    assert run() == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(all_schemas())
    assert run("--check") == 0

    event_file = out / "customer-event.schema.json"
    event_file.write_text(event_file.read_text().replace("Customer event", "Customer evnt"))
    (out / "old.schema.json").write_text("{}")
    assert run("--check") == 1
    err = capsys.readouterr().err
    assert "customer-event.schema.json: differs" in err and "old.schema.json" in err
    assert check_schemas(out) != []
    write_schemas(out)
    assert [p for p in check_schemas(out) if "old.schema.json" not in p] == []


def test_rendering_is_stable() -> None:
    assert render(all_schemas()["prediction.schema.json"]) == render(
        all_schemas()["prediction.schema.json"]
    )


# --------------------------------------------------------------------------- (b) agreement


def test_the_date_time_format_is_really_checked(committed: dict[str, dict[str, Any]]) -> None:
    """Guard: without this, every string would pass as a date-time and (b) would be void."""
    event = {"event_id": "e", "customer_id": "c", "event_type": "login"}
    check = validator(committed["customer-event.schema.json"])
    assert check.is_valid({**event, "event_time": "2024-05-01T12:30:00Z"})
    assert not check.is_valid({**event, "event_time": "garbage"})
    assert not check.is_valid({**event, "event_time": "2024-05-01T12:30:00"})


def _reject_constant(literal: str) -> float:
    raise ValueError(f"{literal} is not JSON")


def parse_json(payload: bytes | None) -> tuple[bool, Any]:
    """(True, document) if ``payload`` is one strict JSON text, else (False, None).

    Strict: UTF-8 only, no NaN/Infinity (Python's json accepts them by default).  Values
    beyond the size limit are left out too: a byte limit is not something JSON Schema can
    express (it is stated in the schema's description instead).
    """
    if not payload or len(payload) > DEFAULT_MAX_EVENT_BYTES:
        return False, None
    try:
        return True, json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return False, None


def decoder_accepts(payload: bytes) -> bool:
    try:
        decode_one(payload)
    except InvalidEvent:
        return False
    return True


def _time(document: Any) -> Any:
    return document.get("event_time") if isinstance(document, dict) else None


def _in_range(ms: int) -> bool:
    return MIN_EPOCH_MS <= ms <= MAX_EPOCH_MS


def _msgspec_parses(text: str) -> bool:
    try:
        msgspec.json.decode(json.dumps(text), type=datetime)
    except msgspec.ValidationError:
        return False
    return True


#: The documented differences between the schema and the decoder, and nothing else.
#: Each: (what, direction, applies(document)).  Direction "schema" = only the schema
#: accepts it; "decoder" = only the decoder does.  Keep this list short: a new entry is a
#: contract change, and must be stated in the schema's description for producers.
KNOWN_DIFFERENCES: list[tuple[str, str, Callable[[Any], bool]]] = [
    (
        # JSON Schema cannot compare date-time strings with a bound; the decoder checks the
        # range in code.  Stated in event_time's description.
        "RFC 3339 event_time outside 2000-01-01..2100-01-01",
        "schema",
        lambda d: (
            isinstance(_time(d), str)
            and is_rfc3339_date_time(_time(d))
            and _msgspec_parses(_time(d))
            and not _in_range(epoch_ms(_time(d)))
        ),
    ),
    (
        # JSON Schema's "integer" is a mathematical integer, so 1700000000000.0 is one;
        # msgspec reads a JSON number with a fraction or exponent as a float and refuses it
        # for an int field.  The description says "integer ... not a float".
        "event_time written as an integral float (1700000000000.0, 1.7e12)",
        "schema",
        lambda d: (
            isinstance(_time(d), float) and _time(d).is_integer() and _in_range(int(_time(d)))
        ),
    ),
    (
        # msgspec reads a few forms RFC 3339 does not allow (space for "T", an offset
        # without colon).  Producers must not rely on them.
        "lenient date-time text msgspec reads but RFC 3339 forbids",
        "decoder",
        lambda d: isinstance(_time(d), str) and not is_rfc3339_date_time(_time(d)),
    ),
    (
        # RFC 3339 allows second 60 (leap second); msgspec (like Python) refuses it.
        "leap second",
        "schema",
        lambda d: isinstance(_time(d), str) and bool(re.search(r"T\d\d:\d\d:60", _time(d))),
    ),
]


def _base(**fields: Any) -> bytes:
    event = {
        "event_id": "e-1",
        "customer_id": "c-1",
        "event_time": 1_714_566_600_000,
        "event_type": "purchase",
    }
    return json.dumps({**event, **fields}).encode()


#: Hand-picked cases around every bound, beside the random corpus.
EDGE_CASES: list[bytes] = [
    _base(),
    _base(event_time=MIN_EPOCH_MS),
    _base(event_time=MIN_EPOCH_MS - 1),
    _base(event_time=MAX_EPOCH_MS),
    _base(event_time=MAX_EPOCH_MS + 1),
    _base(event_time="2000-01-01T00:00:00Z"),
    _base(event_time="1999-12-31T23:59:59.999Z"),
    _base(event_time="2100-01-01T00:00:00Z"),
    _base(event_time="2100-01-01T00:00:00.001Z"),
    _base(event_time="2000-01-01T00:30:00+01:00"),
    _base(event_time="2024-05-01t12:30:00z"),
    _base(event_time="2024-05-01T12:30:00-00:00"),
    _base(event_time="2024-05-01T12:30:00.123456789+05:30"),
    _base(event_time="2024-02-29T12:00:00Z"),
    _base(event_time="2023-02-29T12:00:00Z"),
    _base(event_time="2024-05-01T12:30:00+23:59"),
    _base(event_time="2024-05-01T12:30:00+24:00"),
    _base(event_time="2024-05-01T24:00:00Z"),
    _base(event_time="2024-05-01 12:30:00Z"),  # lenient: space
    _base(event_time="2024-05-01T12:30:00+0530"),  # lenient: offset without colon
    _base(event_time="2016-12-31T23:59:60Z"),  # leap second
    _base(event_time="2024-05-01T12:30:00"),
    _base(event_time="2024-05-01"),
    _base(event_time=1_714_566_600_000.0),  # integral float
    _base(event_time=1.7145666e12),
    _base(event_time=1_714_566_600_000.5),
    _base(event_time=True),
    _base(event_id="x" * 128),
    _base(event_id="x" * 129),
    _base(event_id="\U0001f600" * 128),  # lengths count characters, not bytes
    _base(event_id="\U0001f600" * 129),
    _base(event_id=""),
    _base(region="r" * 64),
    _base(region="r" * 65),
    _base(region=None, plan_type=None, amount=None),
    _base(amount=0),
    _base(amount=-0.0),
    _base(amount=1e12),
    _base(amount=1e12 * 1.0000001),
    _base(amount=-1e-300),
    _base(age=150),
    _base(age=150.0001),
    _base(quantity=10**9),
    _base(tenure_months=1200),
    _base(tenure_months=1201),
    _base(income=10**30),
    _base(amount=True),
    _base(amount="1"),
    _base(extra={"nested": [1, 2, {"deeper": None}]}),
    _base(event_type="LOGIN"),
    _base(event_type=""),
    b'{"event_id":"e","customer_id":"c","event_type":"login"}',
    b"{}",
    b"[]",
    b"null",
    b'"event"',
]


def _cases() -> list[bytes]:
    corpus = [case.payload for case in bad_cases(3000, seed=101)]
    return [*EDGE_CASES, *valid_events(1000, seed=102), *(p for p in corpus if p)]


def test_schema_and_decoder_agree_on_every_parseable_case_but_the_known_differences(
    committed: dict[str, dict[str, Any]],
) -> None:
    check = validator(committed["customer-event.schema.json"])
    unexplained: list[str] = []
    seen: set[str] = set()
    compared = 0
    for payload in _cases():
        parseable, document = parse_json(payload)
        if not parseable:
            continue
        compared += 1
        by_schema, by_decoder = check.is_valid(document), decoder_accepts(payload)
        if by_schema == by_decoder:
            continue
        direction = "schema" if by_schema else "decoder"
        known = [what for what, way, applies in KNOWN_DIFFERENCES if applies(document)]
        if known and all(way == direction for what, way, _ in KNOWN_DIFFERENCES if what in known):
            seen.update(known)
            continue
        unexplained.append(f"only the {direction} accepts {payload[:160]!r}")
    assert compared > 2000
    assert unexplained == [], "\n".join(unexplained[:20])
    # Every documented difference still exists: if one went away, drop it from the list
    # (and from the schema's prose).
    assert seen == {what for what, _, _ in KNOWN_DIFFERENCES}


# --------------------------------------------------------------------------- (c) outputs


def _prediction(**changes: Any) -> Prediction:
    fields: dict[str, Any] = {
        "event_id": "evt-1",
        "customer_id": "cust-1",
        "score": 0.73,
        "decision": True,
        "threshold": 0.5,
        "model_name": "churn",
        "model_version": "v0002",
        "event_time": 1_714_566_600_000,
        "processed_at": 1_714_566_601_000,
        "source_partition": 0,
        "source_offset": 42,
    }
    return Prediction(**{**fields, **changes})


def _retrain_request(**changes: Any) -> RetrainRequest:
    fields: dict[str, Any] = {
        "request_id": "5b0c3f9e8d2a4c61b7e0f1a2d3c4b5a6",
        "incident_id": "9f2c1e6b" * 8,
        "model_name": "churn",
        "model_version": "v0002",
        "reference_hash": "4e1d2c3b" * 8,
        "reason": "feature_drift",
        "drifted_features": [DriftedFeature("spend_30d", "mean", 41.7, 17.2, 0.62)],
        "drifted_share": 0.41,
        "window_start_ms": 1_714_566_600_000,
        "window_end_ms": 1_714_567_320_000,
        "worker_id": "worker-1",
        "created_at": 1_714_567_321.25,
    }
    return RetrainRequest(**{**fields, **changes})


def _headers(**changes: Any) -> DeadLetterHeaders:
    fields: dict[str, Any] = {
        "source_topic": "customer-events",
        "source_partition": "2",
        "source_offset": "1234",
        "reason": "malformed_json",
        "error_class": "decode",
        "error_message": "JSON is malformed: invalid character (byte 0)",
        "failed_at": "1714566601000",
        "worker": "host-1-77",
    }
    return DeadLetterHeaders(**{**fields, **changes})


@pytest.mark.parametrize(
    ("struct", "valid"),
    [
        pytest.param(_prediction(), True, id="prediction"),
        pytest.param(_prediction(score=0.0, decision=False, threshold=1.0), True, id="bounds"),
        pytest.param(_prediction(source_partition=0, source_offset=0), True, id="zeros"),
        pytest.param(_prediction(score=1.5), False, id="score>1"),
        pytest.param(_prediction(score=math.nan), False, id="nan-score-written-as-null"),
        pytest.param(_prediction(event_id=""), False, id="empty-event-id"),
        pytest.param(_prediction(source_offset=-1), False, id="negative-offset"),
        pytest.param(_headers(), True, id="headers"),
        pytest.param(_headers(source_timestamp="1714566600900"), True, id="with-timestamp"),
        pytest.param(_headers(source_timestamp="-1"), True, id="negative-timestamp"),
        pytest.param(_headers(error_message="m" * 1024), True, id="message-1024"),
        pytest.param(_headers(error_message="m" * 1025), False, id="message-1025"),
        pytest.param(_headers(source_offset="12a"), False, id="offset-not-decimal"),
        pytest.param(_headers(failed_at=""), False, id="empty-failed-at"),
        pytest.param(_retrain_request(), True, id="retrain-request"),
        pytest.param(
            _retrain_request(reason="prediction_drift", drifted_features=[]),
            True,
            id="retrain-prediction-drift",
        ),
        pytest.param(
            _retrain_request(
                reason="alert",
                drifted_features=[DriftedFeature("plan_type", "unseen", 25.3, 9.8, None)],
            ),
            True,
            id="retrain-alert-psi-null",
        ),
        pytest.param(_retrain_request(reason="manual"), False, id="retrain-unknown-reason"),
        pytest.param(
            # A non-finite statistic is written as null, which neither side reads as a number.
            _retrain_request(drifted_features=[DriftedFeature("x", "mean", math.inf, 1.0, None)]),
            False,
            id="retrain-infinite-statistic",
        ),
        pytest.param(_retrain_request(window_start_ms="0"), False, id="retrain-time-as-text"),
    ],
)
def test_what_the_worker_encodes_validates_against_its_schema_iff_the_decoder_reads_it(
    struct: msgspec.Struct, valid: bool, committed: dict[str, dict[str, Any]]
) -> None:
    """Encoding does not validate (msgspec checks constraints on decode only), so the
    worker could write a value its own contract refuses: schema and decoder must agree."""
    file_name = next(c.file_name for c in CONTRACTS if isinstance(struct, c.struct))
    raw = msgspec.json.encode(struct)
    by_schema = validator(committed[file_name]).is_valid(json.loads(raw))
    try:
        msgspec.json.decode(raw, type=type(struct))
        by_decoder = True
    except msgspec.ValidationError:
        by_decoder = False
    assert (by_schema, by_decoder) == (valid, valid)


def test_dead_letter_headers_as_the_kafka_worker_writes_them_match_the_schema(
    committed: dict[str, dict[str, Any]],
) -> None:
    dead_letters = pytest.importorskip("driftline.engine.kafka.dead_letters")
    processor = pytest.importorskip("driftline.processor")

    class Record:  # the part of confluent_kafka.Message the header builder reads
        def partition(self) -> int:
            return 3

        def offset(self) -> int:
            return 18232

        def timestamp(self) -> tuple[int, int]:
            return 1, 1714566600100  # TIMESTAMP_CREATE_TIME

        def headers(self) -> list[tuple[str, bytes]]:
            return [("traceparent", b"00-abc-def-01")]

    rejected = processor.Rejected(0, "malformed_json", "decode", "\udcff bad " * 300)
    own = dead_letters.dead_letter_headers(
        Record(), rejected, "customer-events", "host-1-77", b"1714566601000"
    )
    # As written whole, and cut to fit a small dead-letter topic (value and key cut).
    cases = ((1_000_000, b"c-1", b"{not json", False), (4096, b"k" * 2000, b"x" * 10**5, True))
    for limit, key, value, cut_expected in cases:
        _key, _value, headers, cut = dead_letters.fit_dead_letter(
            key, value, own, Record().headers(), limit
        )
        assert cut == cut_expected
        names = [name for name, _ in headers]
        assert names[-1] == "traceparent", "the original headers come last"
        document = {name: text.decode("utf-8") for name, text in headers}
        validator(committed["dead-letter-headers.schema.json"]).validate(document)
        msgspec.json.decode(json.dumps(document).encode(), type=DeadLetterHeaders)
