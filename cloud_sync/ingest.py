"""The ingest role: every device's device->cloud topics -> the cloud database.

paho's network thread only queues what arrives; one writer thread takes up to
``max_batch`` messages at a time, decodes each with ``protocol.decode`` and
stores them all in ONE transaction, each message inside its own savepoint (a
message that cannot be stored is rolled back alone and logged). On PostgreSQL
the savepoints go out pipelined, without waiting for the server (one round
trip per batch); if the database refuses a value, the batch is stored again
with each savepoint waited for, so only that message is rejected. Only after the
COMMIT does it publish a ``ResultsAck`` for every results batch and send the
broker its PUBACKs (manual ack): nothing is acknowledged that is not on disk.

A payload that is malformed, oversized, of another schema version, or names a
device other than its topic's is rejected with the reason logged; it never
stops the role. Results the cloud refuses for good are named in the ack's
``rejected``, so the device stops re-sending them and counts them: an id
already stored for another device, a non-finite number, and a result that does
not decode inside a results message whose envelope still names its device and
ids (its valid results are stored). If the database keeps failing, nothing is
acknowledged: the devices keep their copies and re-send. A ``ClockCorrection``
(``store/clocks.py``) is acknowledged the same way, its id in a ``ResultsAck``
(``batch`` = ``ids`` = its id), or in ``rejected`` when its times are not plausible.

Several ingest roles split the results, telemetry and replies through an MQTT 5
shared subscription (``$share/<group>/edge/+/results``); retained topics
(status, models/reported) are subscribed by every role, since a broker sends no
retained messages to a shared subscription, and storing them is idempotent. A
``models/reported`` outcome also moves the device's state in its deployment
(``downloading`` with progress ... ``active`` / ``failed`` with the reason /
``rolled_back``), newest device timestamp first.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass

from cloud_sync.config import CloudConfig
from cloud_sync.errors import CloudSyncError, Rejected, StoreError, ValueRefused
from cloud_sync.mqtt import Message, MqttLink, broker_options, shared
from cloud_sync.store import Store
from edge_agent.sync import protocol
from edge_agent.sync.protocol import (
    ClockCorrection,
    CommandReply,
    ModelsReported,
    ResultRecord,
    Results,
    ResultsAck,
    Status,
    Telemetry,
)

logger = logging.getLogger(__name__)

COMMIT_RETRIES = (0.5, 1.0, 2.0)
STATS_EVERY_S = 30.0
FINAL_UPDATE_STATES = frozenset({"staged", "active", "failed", "rolled_back"})


@dataclass(frozen=True, slots=True)
class _Pending:
    """A results message stored in this transaction, its ack waiting for the batch's owner read."""

    msg: Results
    ids: list[str]
    refused: list[str]
    undecodable: list[str]


@dataclass(frozen=True, slots=True)
class _Answered:
    """A clock correction applied (or refused for good, with the reason): its ack is ready."""

    ack: ResultsAck
    refused: str | None = None


@dataclass
class IngestStats:
    messages: int = 0
    rejected: int = 0
    results_acked: int = 0
    results_refused: int = 0
    batches: int = 0
    dropped: int = 0  # messages given up on after the database failed COMMIT_RETRIES times

    def line(self) -> str:
        return (
            f"{self.messages} messages in {self.batches} transactions, {self.rejected} rejected, "
            f"{self.results_acked} results acked, {self.results_refused} refused, {self.dropped} dropped"
        )


# the type ``protocol.decode`` returns (the protocol module names it privately)
WireMessage = protocol._Msg
# a decoded message with the ids of the results in it that could not be decoded
Decoded = tuple[Message, WireMessage, list[str]]


def salvage_results(topic_name: str, payload: bytes) -> tuple[Results, list[str]] | None:
    """The valid results and the ids of the undecodable ones of a results message that failed
    ``protocol.decode``; None unless its envelope is schema version 1 and names the topic's device.

    A result that cannot be decoded now never will be, so its id goes in the ack's ``rejected``;
    without the salvage the device would re-send the whole message forever."""
    try:
        device, kind = protocol.parse_topic(topic_name)
        if kind != "results" or len(payload) > protocol.MAX_PAYLOAD_BYTES:
            return None
        doc = json.loads(payload)
    except (protocol.ProtocolError, ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(doc, dict) or type(doc.get("v")) is not int or doc["v"] != protocol.SCHEMA_VERSION:
        return None
    items = doc.get("results")
    if doc.get("device") != device or not isinstance(items, list):
        return None
    good: list[ResultRecord] = []
    bad: list[str] = []
    for item in items:
        rid = item.get("id") if isinstance(item, dict) else None
        if not isinstance(rid, str) or not 1 <= len(rid) <= 64:
            continue  # nothing the device could match: it re-sends, and the log says why
        try:
            good.append(ResultRecord.model_validate(item))
        except ValueError:  # pydantic's ValidationError, or a hostile value's own error
            bad.append(rid)
    batch = doc.get("batch")
    batch = batch if isinstance(batch, str) and 1 <= len(batch) <= 64 else "unknown"
    if len(good) > protocol.MAX_RESULTS_PER_MESSAGE:
        return None  # valid results, too many in one message: no ack, never a refusal of good data
    return Results(device=device, batch=batch, results=good), bad


class Ingest:
    def __init__(
        self, store: Store, link: MqttLink, *, name: str, group: str | None = None, max_batch: int = 64
    ) -> None:
        self.store = store
        self.link = link
        self.name = name
        self.group = group
        self.max_batch = max_batch
        self.stats = IngestStats()
        self._queue: queue.Queue[Message] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingest-writer", daemon=True)

    def subscriptions(self) -> list[str]:
        return [
            shared(protocol.subscription(kind), None if kind in protocol.RETAINED else self.group)
            for kind in sorted(protocol.DEVICE_TO_CLOUD)
        ]

    def start(self) -> None:
        for subscription in self.subscriptions():
            self.link.subscribe(subscription, self._queue.put, qos=1)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Store and acknowledge what has arrived, then stop the writer."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        logger.info("ingest %s stopped: %s", self.name, self.stats.line())

    # -- the writer thread -----------------------------------------------------------------
    def _run(self) -> None:
        last_report, reported = time.monotonic(), ""
        while True:
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    return
                first = None
            if first is not None:
                batch = [first]
                while len(batch) < self.max_batch:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                try:
                    self.process(batch)
                except Exception:  # never let one batch end the role
                    logger.exception("ingest batch of %d messages failed", len(batch))
            if time.monotonic() - last_report > STATS_EVERY_S and self.stats.line() != reported:
                reported = self.stats.line()
                last_report = time.monotonic()
                logger.info("ingest %s: %s", self.name, reported)

    def process(self, batch: list[Message]) -> None:
        """Decode, store in one transaction, then publish results acks and PUBACK the batch."""
        self.stats.messages += len(batch)
        try:
            decoded = [found for m in batch if (found := self._decode(m)) is not None]
            acks = self._store(decoded) if decoded else []
            for ack in acks:
                try:
                    self.link.publish(protocol.topic(ack.device, "results_ack"), protocol.encode(ack), qos=1)
                except (CloudSyncError, protocol.ProtocolError) as exc:
                    logger.warning(
                        "results ack to %s not sent (the device will re-send): %s", ack.device, exc
                    )
        finally:  # always, or the broker's in-flight window for us would close
            for m in batch:
                self.link.ack(m)

    def _decode(self, m: Message) -> Decoded | None:
        try:
            kind, msg = protocol.decode(m.topic, m.payload)
        except protocol.ProtocolError as exc:
            reason = exc.message
        except RecursionError:  # json.loads on deeply nested arrays: not a ValueError
            reason = "payload is nested too deeply to decode"
        except Exception as exc:  # whatever else a hostile payload finds: reject, never stop
            reason = f"payload cannot be decoded ({type(exc).__name__})"
        else:
            if kind in protocol.DEVICE_TO_CLOUD:
                return m, msg, []
            reason = f"{kind} messages go from the cloud to devices"
        self._reject(m, reason)
        salvaged = salvage_results(m.topic, m.payload)
        if salvaged is None:
            return None
        results, bad = salvaged
        logger.warning(
            "results message from %s: %d results stored if valid, %d refused for good (%s)",
            results.device,
            len(results.results),
            len(bad),
            bad[:5],
        )
        return m, results, bad

    def _store(self, decoded: list[Decoded]) -> list[ResultsAck]:
        # First the batch's savepoints go out pipelined (PostgreSQL: one round trip per batch, not
        # two per message); if the database refuses a value, the batch again with each message's
        # savepoint waited for, so that message alone is rejected.
        isolate = False
        delays = iter((*COMMIT_RETRIES, None))
        attempt = 0
        while True:
            acks: list[ResultsAck] = []
            pending: list[_Pending] = []
            answered: list[tuple[Message, _Answered]] = []
            refusals: list[tuple[Message, str]] = []
            try:
                with self.store.transaction():
                    # every device row of the batch locked up front, in id order: several ingest
                    # processes on one PostgreSQL never wait on each other in a cycle
                    seen: dict[str, float] = {}
                    for m, msg, _ in decoded:
                        seen[msg.device] = max(seen.get(msg.device, 0.0), m.received)
                    self.store.touch_devices(seen)
                    for m, msg, bad in decoded:
                        try:
                            # a savepoint: a failure rolls back this message only
                            with self.store.transaction(sync=isolate):
                                ack = self._store_one(m, msg, bad)
                        except StoreError:  # the database, not the message: retry the batch
                            raise
                        except ValueRefused as exc:  # this message's value, or an earlier one's
                            if not isolate:
                                raise
                            refusals.append((m, exc.message))
                        except CloudSyncError as exc:
                            refusals.append((m, exc.message))
                        except Exception as exc:  # a bug must cost one message, not the batch
                            logger.exception("storing a message on %s failed", m.topic)
                            refusals.append((m, f"internal error ({type(exc).__name__})"))
                        else:
                            if isinstance(ack, _Answered):
                                answered.append((m, ack))
                            elif ack is not None:
                                pending.append(ack)
                    # whose ids are these: one read for the whole batch, inside its transaction
                    owners = self.store.result_owners([i for p in pending for i in p.ids])
                    acks = [self._ack(p, owners) for p in pending] + [a.ack for _, a in answered]
            except (StoreError, ValueRefused) as exc:
                if isinstance(exc, ValueRefused) and not isolate:
                    logger.info(
                        "a value in a batch of %d messages was refused (%.200s): storing them "
                        "each in a savepoint waited for",
                        len(decoded),
                        exc.message,
                    )
                    isolate = True
                    continue
                attempt, delay = attempt + 1, next(delays)
                if delay is None:
                    logger.error("giving up on %d messages (devices will re-send): %s", len(decoded), exc)
                    self.stats.dropped += len(decoded)
                    return []
                logger.warning("storing %d messages failed (attempt %d): %s", len(decoded), attempt, exc)
                time.sleep(delay)
                continue
            refusals += [(m, a.refused) for m, a in answered if a.refused is not None]
            for m, reason in refusals:
                self._reject(m, reason)
            self.stats.batches += 1
            self.stats.results_acked += sum(len(a.ids) for a in acks)
            return acks

    def _ack(self, p: _Pending, owners: dict[str, str]) -> ResultsAck:
        msg = p.msg
        refused = [*p.refused, *(i for i in p.ids if owners.get(i) != msg.device)]
        if refused:
            self.stats.results_refused += len(refused)
            logger.warning(
                "%d results of batch %s from %s refused (id stored for another device, a "
                "non-finite number, a NUL character): %s",
                len(refused),
                msg.batch,
                msg.device,
                refused[:5],
            )
        rejected = list(dict.fromkeys([*refused, *p.undecodable]))
        self.stats.results_refused += len(p.undecodable)
        ids = [i for i in p.ids if owners.get(i) == msg.device]
        return ResultsAck(device=msg.device, batch=msg.batch, ids=ids, rejected=rejected)

    def _store_one(self, m: Message, msg: WireMessage, undecodable: list[str]) -> _Pending | _Answered | None:
        if isinstance(msg, Results):
            ids, refused = self.store.insert_results(msg, m.received, self.name)
            return _Pending(msg, ids, refused, undecodable)
        if isinstance(msg, ClockCorrection):
            return self._clock_correction(m, msg)
        if isinstance(msg, Status):
            self.store.record_status(msg, m.received)
        elif isinstance(msg, Telemetry):
            self.store.record_telemetry(msg, m.received)
        elif isinstance(msg, CommandReply):
            self.store.record_reply(msg, m.received)
        elif isinstance(msg, ModelsReported):
            self.store.record_reported(msg, m.received)  # also the device's state in its deployment
            update = msg.last_update
            if update is not None and update.state in FINAL_UPDATE_STATES:
                logger.info(
                    "deployment %s: %s %s %s %s%s",
                    update.deployment,
                    msg.device,
                    update.model,
                    update.version,
                    update.state,
                    f" ({update.reason[:200]})" if update.reason else "",
                )
        else:
            raise Rejected(f"no handler for {type(msg).__name__}")
        return None

    def _clock_correction(self, m: Message, msg: ClockCorrection) -> _Answered:
        """Apply it and acknowledge its id; one refused for good (implausible times: nothing
        changed) is named in the ack's ``rejected``, so the device stops sending it."""
        try:
            n = self.store.record_clock_correction(msg, m.received)
        except Rejected as exc:
            refused = ResultsAck(device=msg.device, batch=msg.id, ids=[], rejected=[msg.id])
            return _Answered(refused, exc.message)
        logger.info(
            "clock correction %s from %s: boot %s, seq %d..%d, %d stored results corrected now",
            msg.id,
            msg.device,
            msg.boot,
            msg.first_seq,
            msg.last_seq,
            n,
        )
        return _Answered(ResultsAck(device=msg.device, batch=msg.id, ids=[msg.id]))

    def _reject(self, m: Message, reason: str) -> None:
        self.stats.rejected += 1
        logger.warning("rejected message on %.120r (%d bytes): %.300s", m.topic, len(m.payload), reason)


def run(config: CloudConfig, stop: threading.Event) -> IngestStats:
    """The ingest role until ``stop`` is set: connect, subscribe, store, acknowledge."""
    store = Store(config.db_target, pool_size=config.db_pool_size)
    link = MqttLink(broker_options(config), config.ingest_client_id, manual_ack=True)
    group = config.ingest_group if config.ingest_shared else None
    ingest = Ingest(store, link, name=config.ingest_client_id, group=group, max_batch=config.ingest_max_batch)
    ingest.start()
    try:
        link.start(wait_s=15.0)
        if link.wait_subscribed(10.0):
            logger.info("ingest %s ready: subscribed to %s", ingest.name, ", ".join(ingest.subscriptions()))
        else:
            logger.warning("ingest %s: the broker has not acknowledged every subscription", ingest.name)
        stop.wait()
    finally:
        ingest.stop()
        link.close()
        store.close()
    return ingest.stats
