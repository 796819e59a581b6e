"""The frozen wire contract: every MQTT message kind at schema version 1, as devices in the
field send and receive it (``tests/sync/wire_v1/*.json``), decoded by today's
``edge_agent.sync.protocol`` and re-encoded to the same JSON.

A change that fails here would break a deployed device: a renamed, removed or newly required
field, a new field in a message the device receives (devices refuse unknown fields), a changed
topic, retained flag or schema version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge_agent.sync import protocol as p

SAMPLES_DIR = Path(__file__).parent / "wire_v1"
SAMPLES = sorted(SAMPLES_DIR.glob("*.json"))

# Optional fields added to a message after these samples were frozen (each payload model's
# ``added_after_freeze``). Each is compatible with devices in the field only if it is optional,
# stays off the wire when absent (a receiver that predates it never sees it) and is shown in a
# sample that declares it in ``added_after_freeze``. A field may be added; none may be removed.
ADDED_AFTER_FREEZE: dict[str, set[str]] = {
    kind: set(model.added_after_freeze) for kind, model in p.PAYLOADS.items() if model.added_after_freeze
}


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def test_there_is_a_frozen_sample_of_every_message_kind() -> None:
    kinds = {p.parse_topic(load(path)["topic"])[1] for path in SAMPLES}
    assert kinds == set(p.TOPICS)


def test_a_message_kind_added_after_the_freeze_goes_to_the_cloud_and_is_shown() -> None:
    """A device in the field never receives a kind it does not know; a cloud that predates one
    never subscribes to its topic (the device's outbox keeps the message until a cloud that knows
    it acknowledges it)."""
    added = {p.parse_topic(load(s)["topic"])[1] for s in SAMPLES if load(s).get("kind_added_after_freeze")}
    assert added == set(p.KINDS_ADDED_AFTER_FREEZE)
    assert p.KINDS_ADDED_AFTER_FREEZE <= p.DEVICE_TO_CLOUD - p.RETAINED


def test_the_samples_are_schema_version_1_and_this_end_still_speaks_it() -> None:
    assert p.SCHEMA_VERSION == 1
    assert {load(path)["payload"]["v"] for path in SAMPLES} == {1}


@pytest.mark.parametrize("path", SAMPLES, ids=[s.stem for s in SAMPLES])
def test_a_frozen_sample_decodes_and_re_encodes_to_the_same_json(path: Path) -> None:
    sample = load(path)
    kind, msg = p.decode(sample["topic"], json.dumps(sample["payload"]).encode())
    assert isinstance(msg, p.PAYLOADS[kind])
    assert p.topic(msg.device, kind) == sample["topic"]
    assert (kind in p.RETAINED) is sample["retained"]
    expected = sample["payload"] | sample.get("defaults", {})
    assert json.loads(p.encode(msg)) == expected
    # and what this end sends, the other end of the same version reads back unchanged
    assert p.decode(sample["topic"], p.encode(msg)) == (kind, msg)


@pytest.mark.parametrize("path", SAMPLES, ids=[s.stem for s in SAMPLES])
def test_the_samples_leave_nothing_out_but_the_declared_defaults(path: Path) -> None:
    """A sample without ``defaults`` carries every field, so a field added to the model shows up
    as a difference above instead of passing silently."""
    sample = load(path)
    kind = p.parse_topic(sample["topic"])[1]
    fields = set(p.PAYLOADS[kind].model_fields) - ADDED_AFTER_FREEZE.get(kind, set())
    fields |= {f for f in sample.get("added_after_freeze", []) if "[]." not in f}
    assert set(sample["payload"]) | set(sample.get("defaults", {})) == fields


@pytest.mark.parametrize("field", sorted(p.ResultRecord.added_after_freeze))
def test_a_result_field_added_after_the_freeze_is_optional_absent_from_the_wire_and_shown(field: str) -> None:
    assert not p.ResultRecord.model_fields[field].is_required()
    shown = [s for s in SAMPLES if f"results[].{field}" in load(s).get("added_after_freeze", [])]
    assert shown and any(field in r for s in shown for r in load(s)["payload"]["results"])
    for path in SAMPLES:  # a result without it still encodes without it
        sample = load(path)
        if p.parse_topic(sample["topic"])[1] == "results":
            _, msg = p.decode(sample["topic"], json.dumps(sample["payload"]).encode())
            sent = json.loads(p.encode(msg))["results"]
            assert [field in r for r in sent] == [field in r for r in sample["payload"]["results"]]


@pytest.mark.parametrize(
    ("kind", "field"), [(k, f) for k, fs in sorted(ADDED_AFTER_FREEZE.items()) for f in sorted(fs)]
)
def test_a_field_added_after_the_freeze_is_optional_absent_from_the_wire_and_shown(
    kind: str, field: str
) -> None:
    model = p.PAYLOADS[kind]
    assert not model.model_fields[field].is_required(), f"{kind}.{field} must be optional"
    shown = [s for s in SAMPLES if field in load(s).get("added_after_freeze", [])]
    assert shown, f"no sample in {SAMPLES_DIR.name}/ shows {kind}.{field}"
    # every frozen sample of this kind without the field still encodes without it
    for path in SAMPLES:
        sample = load(path)
        if p.parse_topic(sample["topic"])[1] == kind and field not in sample["payload"]:
            _, msg = p.decode(sample["topic"], json.dumps(sample["payload"]).encode())
            assert field not in json.loads(p.encode(msg))
