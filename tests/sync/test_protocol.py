"""The fleet link's wire contract (edge_agent/sync/protocol.py), which both ends import."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edge_agent.errors import EdgeAgentError
from edge_agent.storage import OUTBOX_ROWS, Storage, envelope
from edge_agent.sync import protocol as p

DEV = "dev-1"
RECORD = {
    "id": "r1",
    "source": "gateway",
    "ref": None,
    "model": "iris",
    "version": "1",
    "created": 1.0,
    "body": {"label": "setosa"},
}
SIGNED = {
    "manifest": {"name": "iris", "version": "2"},
    "signature": "c2ln",
    "key_id": "k1",
    "artifact_url": "https://cloud.example/models/iris/2.tar",
    "artifact_sha256": "0" * 64,
}
SAMPLES: dict[str, dict[str, Any]] = {
    "status": {"state": "online", "agent_version": "0.1.0", "models": {"iris": "1"}, "ts": 1.0},
    "telemetry": {"ts": 1.0, "metrics": {"outbox_depth": 3.0}},
    "results": {"batch": "b1", "results": [RECORD]},
    "results_ack": {"batch": "b1", "ids": ["r1"]},
    "cmd": {"id": "c1", "name": "ping", "args": {}, "ts": 1.0},
    "cmd_reply": {"id": "c1", "ok": True, "result": {"pong": True}, "error": None, "ts": 1.0},
    "models_desired": {"deployment": "d1", "models": [SIGNED], "ts": 1.0},
    "models_reported": {
        "models": {"iris": "2"},
        "last_update": {
            "deployment": "d1",
            "model": "iris",
            "version": "2",
            "state": "active",
            "reason": None,
            "progress": 1.0,
            "ts": 1.0,
        },
        "ts": 1.0,
    },
    "clock_correction": {
        "id": "clock:3:b1",
        "boot": "b1",
        "first_seq": 3,
        "last_seq": 9,
        "count": 7,
        "boot_time": 1764349000.0,
        "ts": 1764350000.0,
    },
}


def payload(kind: str, **changes: Any) -> bytes:
    return json.dumps({"v": p.SCHEMA_VERSION, "device": DEV} | SAMPLES[kind] | changes).encode()


def test_every_kind_has_a_topic_a_payload_a_direction_and_a_sample() -> None:
    assert set(p.PAYLOADS) == set(p.TOPICS) == set(SAMPLES)
    assert set(p.TOPICS) == p.DEVICE_TO_CLOUD | p.CLOUD_TO_DEVICE
    assert not p.DEVICE_TO_CLOUD & p.CLOUD_TO_DEVICE
    assert {"status", "models_desired", "models_reported"} == p.RETAINED
    assert issubclass(p.ProtocolError, EdgeAgentError)


@pytest.mark.parametrize("kind", sorted(p.TOPICS))
def test_topics_round_trip(kind: str) -> None:
    name = p.topic(DEV, kind)
    assert name == f"edge/{DEV}/{p.TOPICS[kind]}"
    assert p.parse_topic(name) == (DEV, kind)
    assert p.subscription(kind) == f"edge/+/{p.TOPICS[kind]}"


@pytest.mark.parametrize(
    "name",
    [
        "edge/dev-1",
        "edge/dev-1/nope",
        "other/dev-1/status",
        "edge/+/status",
        "edge/dev 1/status",
        "",
        "edge//cmd",
    ],
)
def test_unknown_topics_are_refused(name: str) -> None:
    with pytest.raises(p.ProtocolError, match="unknown topic"):
        p.parse_topic(name)


@pytest.mark.parametrize("device", ["", "a/b", "+", "#", "x" * 65, "dev 1"])
def test_invalid_device_ids_are_refused(device: str) -> None:
    with pytest.raises(p.ProtocolError, match="invalid device id"):
        p.topic(device, "status")


@pytest.mark.parametrize("kind", sorted(p.TOPICS))
def test_every_payload_round_trips(kind: str) -> None:
    got_kind, msg = p.decode(p.topic(DEV, kind), payload(kind))
    assert got_kind == kind and isinstance(msg, p.PAYLOADS[kind])
    assert p.decode(p.topic(DEV, kind), p.encode(msg)) == (kind, msg)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not json", "is not JSON"),
        (b"\xff\xfe\xfd", "is not JSON"),
        (b"[]", "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (payload("cmd", v=2), "schema version 2; this end speaks 1"),
        (payload("cmd", v="1"), "schema version '1'"),
        (json.dumps({"device": DEV, **SAMPLES["cmd"]}).encode(), "schema version None"),
        (payload("cmd", device="dev-2"), "names device 'dev-2' but was published under 'dev-1'"),
        (payload("cmd", name="reboot"), "invalid cmd payload"),
        (payload("cmd", extra=1), "extra: Extra inputs are not permitted"),
        (payload("cmd", id=""), "id: String should have at least 1 character"),
        (b'{"v": 1, "pad": "' + b"x" * p.MAX_PAYLOAD_BYTES + b'"}', "is over 262144"),
    ],
)
def test_bad_payloads_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(p.ProtocolError) as err:
        p.decode(p.topic(DEV, "cmd"), data)
    assert reason in err.value.message


def test_an_empty_retained_payload_is_a_cleared_message() -> None:
    with pytest.raises(p.ProtocolError, match="cleared retained message"):
        p.decode(p.topic(DEV, "models_desired"), b"")


def test_deeply_nested_json_is_a_protocol_error() -> None:
    with pytest.raises(p.ProtocolError, match="is not JSON"):
        p.decode(p.topic(DEV, "cmd"), b"[" * 100_000 + b"]" * 100_000)


@pytest.mark.parametrize("version", [True, 1.0, "1", None])
def test_only_the_integer_schema_version_is_accepted(version: Any) -> None:
    with pytest.raises(p.ProtocolError, match="schema version"):
        p.decode(p.topic(DEV, "cmd"), payload("cmd", v=version))


def test_non_finite_numbers_are_refused_in_typed_fields_and_sent_as_null_in_bodies() -> None:
    with pytest.raises(p.ProtocolError, match="created"):
        p.decode(p.topic(DEV, "results"), payload("results", results=[RECORD | {"created": float("nan")}]))
    record = p.ResultRecord(**(RECORD | {"body": {"score": float("nan")}}))
    sent = p.encode(p.Results(device=DEV, batch="b", results=[record]))
    assert b'"score":null' in sent  # JSON has no NaN: what the device sends, the cloud can store


def test_an_ack_may_name_ids_the_cloud_will_never_store() -> None:
    _, ack = p.decode(p.topic(DEV, "results_ack"), payload("results_ack", rejected=["r2"]))
    assert isinstance(ack, p.ResultsAck) and (ack.ids, ack.rejected) == (["r1"], ["r2"])
    _, plain = p.decode(p.topic(DEV, "results_ack"), payload("results_ack"))
    assert isinstance(plain, p.ResultsAck) and plain.rejected == []


def test_results_are_bounded_per_message_and_in_bytes() -> None:
    too_many = [RECORD | {"id": f"r{i}"} for i in range(p.MAX_RESULTS_PER_MESSAGE + 1)]
    with pytest.raises(p.ProtocolError, match="results"):
        p.decode(p.topic(DEV, "results"), payload("results", results=too_many))
    big = p.Results(
        device=DEV, batch="b", results=[p.ResultRecord(**(RECORD | {"body": {"x": "y" * 300_000}}))]
    )
    with pytest.raises(p.ProtocolError, match="over the limit"):
        p.encode(big)


def test_an_outbox_envelope_is_a_result_record(tmp_path: Any) -> None:
    """storage.record_result writes what the outbox sends: the two must agree."""
    st = Storage.in_dir(tmp_path)
    with st.transaction() as conn:
        rid = st.record_result(conn, source="camera", model="face", version="1", body={"n": 2}, ref="frame-7")
    row = st.conn.execute(f"{OUTBOX_ROWS} WHERE o.id = ?", (rid,)).fetchone()
    record = p.ResultRecord.model_validate(envelope(row))
    assert (record.id, record.source, record.ref, record.body) == (rid, "camera", "frame-7", {"n": 2})


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"last_seq": 2}, "last_seq 2 is below first_seq 3"),
        ({"count": 8}, "8 results cannot fit in seq 3..9"),
        ({"count": 0}, "count"),
        ({"first_seq": -1}, "first_seq"),
        ({"boot": "a/b"}, "boot"),
        ({"boot": ""}, "boot"),
        ({"boot_time": "soon"}, "boot_time"),
        ({"id": ""}, "id"),
        ({"extra": 1}, "extra"),
    ],
)
def test_a_malformed_clock_correction_is_refused_with_the_reason(
    changes: dict[str, Any], reason: str
) -> None:
    with pytest.raises(p.ProtocolError, match=reason):
        p.decode(p.topic(DEV, "clock_correction"), payload("clock_correction", **changes))


def test_an_unsynced_envelope_carries_its_boot_and_a_synced_one_does_not(tmp_path: Any) -> None:
    st = Storage.in_dir(tmp_path)
    with st.transaction() as conn:
        rid = st.record_result(conn, source="worker", model="iris", version="1", body={})
        conn.execute("UPDATE results SET clock = 'unsynced', boot = 'b1', boot_s = 12.5 WHERE id = ?", (rid,))
    record = p.ResultRecord.model_validate(envelope(st.conn.execute(OUTBOX_ROWS).fetchone()))
    assert (record.clock, record.boot, record.boot_s) == ("unsynced", "b1", 12.5)
    st.conn.execute("UPDATE results SET clock = 'corrected'")
    record = p.ResultRecord.model_validate(envelope(st.conn.execute(OUTBOX_ROWS).fetchone()))
    assert (record.clock, record.boot, record.boot_s) == ("corrected", None, None)
