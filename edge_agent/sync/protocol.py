"""The fleet link's wire contract: topics and payloads, the ONE definition
that the device (``edge_agent.sync``) and the cloud (``cloud_sync``) import.

Every payload is JSON with a schema version ``v``. ``decode`` checks size,
JSON, version and shape, and that the device named in the payload is the one
in the topic; it raises ``ProtocolError`` with a reason a person can act on.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from edge_agent.errors import EdgeAgentError

SCHEMA_VERSION = 1
PREFIX = "edge"
MAX_PAYLOAD_BYTES = 256 * 1024
MAX_RESULTS_PER_MESSAGE = 500
DEVICE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

# kind -> topic suffix under edge/{device}/
TOPICS: dict[str, str] = {
    "status": "status",
    "telemetry": "telemetry",
    "results": "results",
    "results_ack": "results/ack",
    "cmd": "cmd",
    "cmd_reply": "cmd/reply",
    "models_desired": "models/desired",
    "models_reported": "models/reported",
    "clock_correction": "clock",
}
# Message kinds added after schema version 1 was frozen: device -> cloud only (a device that
# predates one never receives it), each shown in a sample marked ``kind_added_after_freeze``.
KINDS_ADDED_AFTER_FREEZE = frozenset({"clock_correction"})
RETAINED = frozenset({"status", "models_desired", "models_reported"})
DEVICE_TO_CLOUD = frozenset(
    {"status", "telemetry", "results", "cmd_reply", "models_reported", "clock_correction"}
)
CLOUD_TO_DEVICE = frozenset({"results_ack", "cmd", "models_desired"})
_SUFFIX_TO_KIND = {v: k for k, v in TOPICS.items()}


class ProtocolError(EdgeAgentError):
    status = 400
    code = "protocol_error"


def topic(device: str, kind: str) -> str:
    if not DEVICE_RE.match(device):
        raise ProtocolError(f"invalid device id {device!r}")
    return f"{PREFIX}/{device}/{TOPICS[kind]}"


def subscription(kind: str, device: str = "+") -> str:
    return f"{PREFIX}/{device}/{TOPICS[kind]}"


def parse_topic(name: str) -> tuple[str, str]:
    """'edge/dev1/results/ack' -> ('dev1', 'results_ack')."""
    parts = name.split("/", 2)
    if (
        len(parts) != 3
        or parts[0] != PREFIX
        or not DEVICE_RE.match(parts[1])
        or parts[2] not in _SUFFIX_TO_KIND
    ):
        raise ProtocolError(f"unknown topic {name!r}")
    return parts[1], _SUFFIX_TO_KIND[parts[2]]


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # Optional fields added after schema version 1 was frozen (tests/sync/wire_v1/): when absent
    # (None or empty) they stay off the wire, so a receiver that predates them never sees them.
    added_after_freeze: ClassVar[frozenset[str]] = frozenset()

    v: int = Field(default=SCHEMA_VERSION, description="Schema version of the payload.")
    device: str = Field(pattern=DEVICE_RE.pattern, description="Device the message is from or for.")

    @model_serializer(mode="wrap")
    def _omit_absent_additions(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for name in self.added_after_freeze:
                if data.get(name) in (None, [], {}):
                    data.pop(name, None)
        return data


class Status(_Msg):
    added_after_freeze = frozenset({"group"})

    state: Literal["online", "offline"]
    agent_version: str = ""
    models: dict[str, str] = Field(default_factory=dict, description="model name -> active version")
    ts: float
    group: str | None = Field(default=None, max_length=64, description="Rollout group (optional).")


class Telemetry(_Msg):
    ts: float
    metrics: dict[str, float] = Field(default_factory=dict)


_OPTIONAL_RESULT_FIELDS = ("seq", "clock", "boot", "boot_s")
BOOT_RE = r"^[A-Za-z0-9_.:-]{1,64}$"


class ResultRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # optional, added after the freeze (sample results_unsynced.json: "results[].<name>")
    added_after_freeze: ClassVar[frozenset[str]] = frozenset({"boot", "boot_s"})

    id: str = Field(min_length=1, max_length=64)
    source: str
    ref: str | None = None
    model: str
    version: str
    created: float
    body: dict[str, Any]
    # optional, in schema version 1 (a device that does not send them is still valid):
    seq: int | None = Field(
        default=None, ge=0, description="The device's result sequence: increases with each result."
    )
    clock: Literal["unsynced", "corrected"] | None = Field(
        default=None,
        description="Absent: created is from a trusted clock. unsynced: recorded before the clock was "
        "synchronised (created may be far off). corrected: recorded then, time corrected since.",
    )
    # sent with clock "unsynced" only: what a later ClockCorrection needs to give the result its
    # real time (boot_time + boot_s)
    boot: str | None = Field(
        default=None, pattern=BOOT_RE, description="The device's boot (kernel boot id) it was recorded in."
    )
    boot_s: float | None = Field(
        default=None, ge=0, description="Seconds since that boot when it was recorded (no NTP step moves it)."
    )

    @model_serializer(mode="wrap")
    def _omit_absent_optionals(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The optional fields are left out when absent: the message is what an older device sends."""
        out: dict[str, Any] = handler(self)
        for key in _OPTIONAL_RESULT_FIELDS:
            if out.get(key) is None:
                out.pop(key, None)
        return out


class Results(_Msg):
    batch: str = Field(min_length=1, max_length=64, description="Id of this message's batch.")
    results: list[ResultRecord] = Field(max_length=MAX_RESULTS_PER_MESSAGE)


class ResultsAck(_Msg):
    batch: str
    ids: list[str] = Field(description="Result ids the cloud has stored (now or before).")
    rejected: list[str] = Field(
        default_factory=list,
        description="Result ids the cloud will never store (invalid): stop re-sending them.",
    )


CommandName = Literal["ping", "status", "list_models", "activate", "rollback", "run_batch", "set_config"]


class Command(_Msg):
    id: str = Field(min_length=1, max_length=64)
    name: CommandName
    args: dict[str, Any] = Field(default_factory=dict)
    ts: float


class CommandReply(_Msg):
    id: str
    ok: bool
    result: dict[str, Any] | None = None
    error: str | None = None
    ts: float


class SignedModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    manifest: dict[str, Any] = Field(description="The model package's manifest.json, as published.")
    signature: str = Field(description="Ed25519 signature (base64) over the canonical manifest JSON.")
    key_id: str
    artifact_url: str = Field(description="Where the package archive can be downloaded (HTTP, resumable).")
    artifact_sha256: str


MAX_SIGNATURES = 16


class Signature(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    keyid: str = Field(
        min_length=1, max_length=64, description="Key id: 16 hex digits of sha256(public key)."
    )
    sig: str = Field(
        min_length=1, max_length=200, description="Ed25519 signature (base64) over canonical JSON."
    )


class Envelope(BaseModel):
    """A signed update metadata document (``edge_agent.sync.metadata``): root or targets."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    signed: dict[str, Any] = Field(description="The document; its canonical JSON is what is signed.")
    signatures: list[Signature] = Field(max_length=MAX_SIGNATURES)


class ModelsDesired(_Msg):
    added_after_freeze = frozenset({"targets", "roots"})

    deployment: str
    models: list[SignedModel]
    ts: float
    targets: Envelope | None = Field(
        default=None,
        description="Signed targets metadata for this device (required by agents >= 0.2; "
        "a desired state without it is refused).",
    )
    roots: list[Envelope] = Field(
        default_factory=list,
        max_length=64,
        description="Root metadata versions 1..N, so a device walks key rotations up to the current root.",
    )


class UpdateOutcome(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    deployment: str
    model: str
    version: str
    state: Literal["downloading", "verifying", "staged", "active", "failed", "rolled_back"]
    reason: str | None = None
    progress: float | None = Field(default=None, ge=0, le=1)
    ts: float


class StageFigures(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    p50_ms: float = Field(ge=0)
    p99_ms: float = Field(ge=0)


class BenchRow(BaseModel):
    """One (batch size, thread count) point of an on-device benchmark."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    batch: int = Field(ge=1, description="Rows per request.")
    threads: int = Field(ge=1, description="Runtime intra-op threads.")
    calls: int = Field(ge=1, description="Timed requests.")
    p50_ms: float = Field(ge=0, description="Median latency of a whole request (all stages).")
    p99_ms: float = Field(ge=0, description="99th percentile latency of a whole request.")
    throughput_rps: float = Field(ge=0, description="Rows per second, one request at a time.")
    stages: dict[str, StageFigures] = Field(description="preprocess, infer, postprocess.")


class ModelBench(BaseModel):
    """``edge-agent models bench`` figures of one model version on this device."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model: str
    version: str
    backend: str
    inputs: Literal["images", "tensors"] = Field(description="What one request carried.")
    memory_mb: float | None = Field(default=None, description="Resident memory added by loading the model.")
    ts: float = Field(description="When the benchmark ran (device clock).")
    rows: list[BenchRow] = Field(min_length=1, max_length=64)


class ShadowReport(BaseModel):
    """Shadow evaluation of a staged version on the device's live requests (``edge_agent.serving.shadow``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model: str
    active: str = Field(description="The version answering callers.")
    candidate: str = Field(description="The staged version given a copy of sampled requests.")
    since: float
    updated: float
    samples: int = Field(ge=0, description="Requests the candidate answered.")
    rows: int = Field(ge=0, description="Rows compared (a request may hold several).")
    agreement: float | None = Field(
        default=None, ge=0, le=1, description="Share of rows with the same top-1 label / matched boxes."
    )
    errors: int = Field(default=0, ge=0, description="Samples the candidate failed on.")
    dropped: int = Field(default=0, ge=0, description="Samples lost to a full queue.")
    rate_limited: int = Field(default=0, ge=0, description="Samples skipped by the rate limit.")
    mean_abs_diff: float | None = Field(default=None, description="Mean absolute output difference.")
    max_abs_diff: float | None = None
    active_ms_p50: float | None = Field(default=None, description="Median compute time of the active answer.")
    candidate_ms_p50: float | None = Field(default=None, description="Median compute time of the candidate.")
    latency_ratio: float | None = Field(default=None, description="candidate_ms_p50 / active_ms_p50.")


class ModelsReported(_Msg):
    added_after_freeze = frozenset({"shadow", "bench"})

    models: dict[str, str]
    last_update: UpdateOutcome | None = None
    ts: float
    shadow: dict[str, ShadowReport] = Field(
        default_factory=dict, description="model -> shadow figures of its staged version (optional)."
    )
    bench: dict[str, ModelBench] | None = Field(
        default=None,
        description="Latest on-device benchmark per model (absent: no news; the cloud keeps what it has).",
    )


class ClockCorrection(_Msg):
    """Sent once the clock is trusted again (added after the freeze: a message of its own, sample
    clock_correction.json): the real time of the results this device recorded with an unsynced
    clock in one boot, the ``seq`` range ``first_seq``..``last_seq``: ``boot_time + boot_s`` of each.
    Durable in the device's outbox until a ``ResultsAck`` names ``id`` (in ``ids``, or in
    ``rejected`` when the cloud refuses it for good); applying it twice changes nothing."""

    id: str = Field(min_length=1, max_length=64, description="Outbox entry id; the ack names it.")
    boot: str = Field(pattern=BOOT_RE, description="Kernel boot id of the boot the results were recorded in.")
    first_seq: int = Field(ge=0, description="Lowest seq (result sequence) corrected.")
    last_seq: int = Field(ge=0, description="Highest seq corrected.")
    count: int = Field(ge=1, description="Results of that boot and range the device corrected.")
    boot_time: float = Field(description="Wall-clock time of that boot's start, from the trusted clock.")
    ts: float = Field(description="When the device found its clock trusted (trusted clock).")

    @model_validator(mode="after")
    def _range(self) -> ClockCorrection:
        if self.last_seq < self.first_seq:
            raise ValueError(f"last_seq {self.last_seq} is below first_seq {self.first_seq}")
        if self.last_seq - self.first_seq + 1 < self.count:
            raise ValueError(f"{self.count} results cannot fit in seq {self.first_seq}..{self.last_seq}")
        return self


PAYLOADS: dict[str, type[_Msg]] = {
    "status": Status,
    "telemetry": Telemetry,
    "results": Results,
    "results_ack": ResultsAck,
    "cmd": Command,
    "cmd_reply": CommandReply,
    "models_desired": ModelsDesired,
    "models_reported": ModelsReported,
    "clock_correction": ClockCorrection,
}


def encode(msg: _Msg) -> bytes:
    data = msg.model_dump_json(exclude_none=False).encode()
    if len(data) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"payload of {len(data)} bytes is over the limit of {MAX_PAYLOAD_BYTES}")
    return data


Message = _Msg


def decode(topic_name: str, payload: bytes) -> tuple[str, Message]:
    """(kind, message) from an MQTT message; ProtocolError with the reason if it is not acceptable."""
    device, kind = parse_topic(topic_name)
    if not payload and kind in RETAINED:
        raise ProtocolError(f"empty payload on {topic_name} (a cleared retained message)")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"payload of {len(payload)} bytes on {topic_name} is over {MAX_PAYLOAD_BYTES}")
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"payload on {topic_name} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolError(f"payload on {topic_name} must be a JSON object")
    version = doc.get("v")
    if type(version) is not int or version != SCHEMA_VERSION:
        raise ProtocolError(
            f"payload on {topic_name} has schema version {version!r}; this end speaks {SCHEMA_VERSION}"
        )
    try:
        msg = PAYLOADS[kind].model_validate(doc)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise ProtocolError(f"invalid {kind} payload on {topic_name}: {problems}") from None
    if msg.device != device:
        raise ProtocolError(f"payload names device {msg.device!r} but was published under {device!r}")
    return kind, msg
