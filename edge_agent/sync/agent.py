"""The ``sync`` role: the device end of the fleet link.

One process: paho's network thread receives, a command thread runs commands
one at a time, and the main thread owns the outbox (drain, acks, bound),
telemetry and status. The role keeps running while the broker is unreachable:
the other roles keep recording into the outbox, and it drains when the link is
back. Birth (``online``) and Last Will (``offline``) go to the retained status
topic; SIGTERM publishes ``offline`` itself and disconnects cleanly.

Run it as ``edge-agent sync`` or, standalone, ``python -m edge_agent.sync.agent``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import resource
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from edge_agent import __version__
from edge_agent.clock import clock_trust, clock_trust_cached
from edge_agent.config import AgentConfig, load_config, with_overrides
from edge_agent.diskspace import LEVELS
from edge_agent.errors import ConfigError, EdgeAgentError
from edge_agent.retention import DAY_S, Pruner
from edge_agent.storage import DiskFull, OutboxBound, Storage
from edge_agent.sync.commands import CommandContext, Commands
from edge_agent.sync.corrections import Corrections
from edge_agent.sync.mqtt import Message, MqttError, MqttLink
from edge_agent.sync.outbox import DROPPED, REJECTED, UNSENDABLE, Outbox
from edge_agent.sync.protocol import (
    DEVICE_TO_CLOUD,
    RETAINED,
    CommandReply,
    ModelsDesired,
    ModelsReported,
    ProtocolError,
    ResultsAck,
    ShadowReport,
    Status,
    Telemetry,
    UpdateOutcome,
    decode,
    encode,
    topic,
)
from edge_agent.sync.protocol import Message as WireMessage
from edge_agent.sync.settings import SyncConfig, with_changes

logger = logging.getLogger(__name__)

LIMIT_CHECK_S = 1.0  # how often the outbox bound is enforced
PRUNE_EVERY_S = 3600.0
COMMAND_QUEUE_LIMIT = 1000
STOP_GRACE_S = 10.0
ERROR_BACKOFF_S = 1.0
MAX_WAIT_S = 0.5  # the loop notices a stop request within this


def rss_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak, not current


class SyncAgent:
    def __init__(self, config: AgentConfig, settings: SyncConfig, *, drain: bool = False) -> None:
        self.config = config
        self.settings = settings
        self.device = config.device_id
        self.drain = drain
        self.storage = Storage.in_dir(
            config.data_dir,
            floor_bytes=config.storage.floor_bytes,
            reserve_bytes=config.storage.reserve_bytes,
            outbox=OutboxBound(settings.outbox_max_rows, settings.on_full),
        )
        self.outbox = Outbox(self.storage, self.device, self._send_results, settings)
        self.corrections = Corrections(
            self.storage, self.device, self._send_correction, lambda: self.settings.ack_timeout_s
        )
        # the gateway's keeper, here too (a device may run no gateway: camera + sync): result times
        # corrected within CLOCK_CHECK_S of the clock being trusted, the correction queued, and
        # delivered results, thumbnails and finished work pruned after [storage] retention_days
        days = config.storage.retention_days
        self.keeper = Pruner(self.storage, None if days is None else days * DAY_S, trust=clock_trust)
        self.on_models_desired: Callable[[ModelsDesired], None] | None = None
        self._shadow_sent: dict[str, Any] = {}
        self.ota, self.ota_runner = self._build_ota()
        if self.ota_runner is not None:
            self.on_models_desired = self.ota_runner.submit  # returns at once; the latest desired wins
        ctx = CommandContext(
            config, self.storage, self.status, self.apply_settings, self._models_changed, ota=self.ota
        )
        self.commands = Commands(ctx, self.device)
        self.rejected = 0
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._command_queue: queue.Queue[Message | None] = queue.Queue()
        self._stop_requested = False
        self._started = time.monotonic()
        self._models = self.active_models()
        self._published_models: dict[str, str] | None = None
        self._last_outcome: UpdateOutcome | None = None
        self._bench_seen: tuple[tuple[str, int], ...] | None = None  # saved figures last reported
        self._next_telemetry = time.monotonic() + settings.telemetry_interval_s
        self._send_blocked = False  # the last send failed on a full disk (logged once)
        self._rate_mark = (time.monotonic(), self.outbox.recorded_total(), 0)
        self.link = MqttLink(
            settings,
            self.device,
            will=self._status_message("offline"),
            on_connect=lambda present: self._events.put(("connected", present)),
            on_disconnect=lambda: self._events.put(("disconnected", None)),
        )

    # -- lifecycle -------------------------------------------------------------------
    def run(self) -> int:
        dev = self.device
        self.link.subscribe(topic(dev, "results_ack"), lambda m: self._events.put(("ack", m)))
        self.link.subscribe(topic(dev, "models_desired"), lambda m: self._events.put(("desired", m)))
        self.link.subscribe(topic(dev, "cmd"), self._enqueue_command)
        worker = threading.Thread(target=self._command_loop, name="sync-commands", daemon=True)
        worker.start()
        self.keeper.start()
        self.link.start()
        try:
            self._loop()
        finally:
            logger.info("stopping: publishing offline status, disconnecting")
            self.keeper.stop()
            self._command_queue.put(None)
            worker.join(STOP_GRACE_S)
            if self.ota_runner is not None:
                self.ota_runner.stop()
                self.ota.close()
            self.link.stop(last=self._status_message("offline"))
            self.storage.close()
            logger.info("sync role stopped; %d entries left in the outbox", self.outbox.depth())
        return 0

    def stop(self) -> None:
        """Ask the loop to stop; safe in a signal handler (sets a flag, takes no lock)."""
        self._stop_requested = True

    def _loop(self) -> None:
        next_limit = next_prune = 0.0
        while not self._stop_requested:
            try:
                self._handle_events(min(self.settings.poll_interval_s, MAX_WAIT_S))
                now = time.monotonic()
                if now >= next_limit:
                    self.outbox.enforce_limit()
                    self._report_bench()
                    next_limit = now + LIMIT_CHECK_S
                if self.link.connected:
                    self._send_due()
                if now >= self._next_telemetry:
                    self._next_telemetry = now + self.settings.telemetry_interval_s
                    self._telemetry()
                if now >= next_prune:
                    self.commands.log.prune(self.settings.command_memory_s)
                    next_prune = now + PRUNE_EVERY_S
                if self.drain and self.outbox.inflight_messages == 0 and self.outbox.depth() == 0:
                    logger.info("outbox drained")
                    self._stop_requested = True
            except (EdgeAgentError, sqlite3.Error) as exc:
                logger.error("sync loop: %s; retrying in %.0f s", exc, ERROR_BACKOFF_S)
                time.sleep(ERROR_BACKOFF_S)

    def _send_due(self) -> None:
        """Send what is due. With 0 bytes free the outbox sends without its marks (outbox.py); a
        write a send turn cannot do without (giving up an unsendable entry) fails with SQLITE_FULL,
        and then the loop goes on anyway (acknowledgements, status and telemetry with
        ``disk_free_bytes`` keep flowing) and retries next turn. Logged once per full spell."""
        try:
            self.corrections.send_due()
            self.outbox.send_due()
        except DiskFull as exc:
            if not self._send_blocked:
                logger.warning("results not sent while the disk is full: %s", exc.message)
            self._send_blocked = True
            return
        if self._send_blocked:
            logger.info("disk space is back: sending results again")
            self._send_blocked = False

    # -- events from the network thread ----------------------------------------------------
    def _handle_events(self, timeout_s: float) -> None:
        try:
            events = [self._events.get(timeout=timeout_s)]
        except queue.Empty:
            return
        while len(events) < 10_000:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                break
        acked: list[str] = []
        refused: list[str] = []
        for kind, value in events:
            try:
                self._handle_event(kind, value, acked, refused)
            except Exception:  # one bad event must not cost the others (acks lost here are re-sent)
                logger.exception("handling a %s event failed; the next one is handled", kind)
        if acked or refused:
            self.outbox.acknowledge(acked, refused)
            self.corrections.acknowledged([*acked, *refused])

    def _handle_event(self, kind: str, value: Any, acked: list[str], refused: list[str]) -> None:
        if kind == "ack":
            msg = self._decode(value)
            if isinstance(msg, ResultsAck):
                acked.extend(msg.ids)
                refused.extend(msg.rejected)
        elif kind == "connected":
            self.outbox.reset_window(resend_now=not value)
            self._publish_status()
            self._bench_seen = None  # the broker may have lost the retained report: send it again
            self._next_telemetry = time.monotonic()
        elif kind == "disconnected":
            self.outbox.reset_window(resend_now=False)
        elif kind == "desired":
            self._desired(value)
        elif kind == "models":
            self._models = self.active_models()
            self._publish_status()

    def _decode(self, message: Message) -> Any:
        try:
            return decode(message.topic, message.payload)[1]
        except ProtocolError as exc:
            self.rejected += 1
            cleared = not message.payload  # clearing a retained message publishes an empty one
            (logger.info if cleared else logger.warning)("rejected message: %s", exc.message[:500])
            return None

    def _desired(self, message: Message) -> None:
        msg = self._decode(message)
        if not isinstance(msg, ModelsDesired):
            return
        if self.on_models_desired is None:
            logger.info(
                "desired state %s (%d models) received; model updates are not handled by this role yet",
                msg.deployment,
                len(msg.models),
            )
            return
        self.on_models_desired(msg)

    def _enqueue_command(self, message: Message) -> None:
        if self._command_queue.qsize() >= COMMAND_QUEUE_LIMIT:
            logger.error("%d commands waiting; dropped one on %s", COMMAND_QUEUE_LIMIT, message.topic)
            return
        self._command_queue.put(message)

    def _command_loop(self) -> None:
        while (message := self._command_queue.get()) is not None:
            try:
                reply = self.commands.handle(message)
                if reply is not None:
                    self._reply(reply, message.correlation_data)
            except Exception:
                logger.exception("command handling failed; the next command is handled")

    def _reply(self, reply: CommandReply, correlation: bytes | None) -> None:
        try:
            payload = encode(reply)
        except ProtocolError as exc:
            payload = encode(
                reply.model_copy(update={"ok": False, "result": {"code": exc.code}, "error": exc.message})
            )
        self.link.publish(topic(self.device, "cmd_reply"), payload, qos=1, correlation_data=correlation)

    # -- publishing ----------------------------------------------------------------
    def publish(self, kind: str, msg: WireMessage) -> None:
        """Publish a device -> cloud message of ``kind`` (e.g. the OTA module's ``models_reported``):
        QoS 1, retained where the contract says so. MqttError when it cannot."""
        if kind not in DEVICE_TO_CLOUD:
            raise ProtocolError(f"{kind} messages go from the cloud to devices")
        self.link.publish(topic(self.device, kind), encode(msg), qos=1, retain=kind in RETAINED)

    def _send_results(self, payload: bytes) -> None:
        self.link.publish(topic(self.device, "results"), payload, qos=1)

    def _send_correction(self, payload: bytes) -> None:
        self.link.publish(topic(self.device, "clock_correction"), payload, qos=1)

    def _status_message(self, state: str) -> Message:
        msg = Status(
            device=self.device,
            state=state,
            agent_version=__version__,
            models=self._models,
            ts=time.time(),
            group=self.config.group,
        )
        return Message(topic(self.device, "status"), encode(msg), qos=1, retain=True)

    def _publish_status(self) -> None:
        if not self.link.connected:
            return
        m = self._status_message("online")
        try:
            self.link.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
            self._published_models = dict(self._models)
        except MqttError as exc:
            logger.warning("status not published: %s", exc.message)

    def _telemetry(self) -> None:
        models = self.active_models()
        if models != self._models or models != self._published_models:
            self._models = models
            self._publish_status()
        if not self.link.connected:
            return
        if self.ota is not None:
            self._report_shadow()
        msg = Telemetry(device=self.device, ts=time.time(), metrics=self.metrics())
        try:
            self.link.publish(topic(self.device, "telemetry"), encode(msg), qos=0)
        except MqttError as exc:
            logger.debug("telemetry not published: %s", exc.message)

    def metrics(self) -> dict[str, float]:
        now, recorded, delivered = time.monotonic(), self.outbox.recorded_total(), self.outbox.delivered
        then, recorded0, delivered0 = self._rate_mark
        self._rate_mark = (now, recorded, delivered)
        dt = max(now - then, 1e-6)
        return {
            "outbox_depth": float(self.outbox.depth()),
            "outbox_oldest_age_s": self.outbox.oldest_age_s(),
            "outbox_inflight_messages": float(self.outbox.inflight_messages),
            "outbox_dropped": float(self.storage.counter(DROPPED)),
            "outbox_unsendable": float(self.storage.counter(UNSENDABLE)),
            "outbox_rejected": float(self.storage.counter(REJECTED)),
            "clock_synced": 1.0 if clock_trust_cached().trusted else 0.0,
            "clock_corrections_waiting": float(self.corrections.waiting),
            "results_recorded_per_s": (recorded - recorded0) / dt,
            "results_delivered_per_s": (delivered - delivered0) / dt,
            "messages_rejected": float(self.rejected + self.commands.rejected),
            "rss_bytes": float(rss_bytes()),
            "uptime_s": now - self._started,
            "models_active": float(len(self._models)),
            **self._disk_metrics(),
        } | self._drift_metrics()

    def _drift_metrics(self) -> dict[str, float]:
        """``drift_psi.<model>`` (largest PSI of the window) and ``drift_flag.<model>`` (1 past the threshold)
        from what the gateway wrote in ``<data_dir>/drift/``."""
        out: dict[str, float] = {}
        for path in sorted((Path(self.config.data_dir) / "drift").glob("*.json")):
            try:
                doc = json.loads(path.read_text())
                out[f"drift_psi.{path.stem}"] = float(doc["max"])
                out[f"drift_flag.{path.stem}"] = 1.0 if doc.get("drifted") else 0.0
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return out

    def _disk_metrics(self) -> dict[str, float]:
        st = self.storage.disk.state()
        return {"disk_free_bytes": float(st.free_bytes), "disk_level": float(LEVELS.index(st.level))}

    # -- for commands (command thread) ----------------------------------------------------
    def active_models(self) -> dict[str, str]:
        from edge_agent.runtime.store import ModelStore  # numpy; no runtime library, no OpenCV

        try:
            store = ModelStore(self.config.model_dir, self.config.store_state_path)
            return {name: store.active_version(name) for name in store.names()}
        except (EdgeAgentError, OSError) as exc:
            logger.warning("cannot read the model store: %s", exc)
            return {}

    def status(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "agent_version": __version__,
            "uptime_s": time.monotonic() - self._started,
            "connected": self.link.connected,
            "outbox_depth": self.outbox.depth(),
            "outbox_dropped": self.storage.counter(DROPPED),
            "delivered_since_start": self.outbox.delivered,
            "disk": self.storage.disk.to_dict(),
            "models": self.active_models(),
            "settings": self.settings.model_dump(mode="json", exclude={"password"}),
        }

    def apply_settings(self, changes: Mapping[str, Any]) -> None:
        self.settings = with_changes(self.settings, changes)
        self.outbox.settings = self.settings
        if "telemetry_interval_s" in changes:
            self._next_telemetry = time.monotonic() + self.settings.telemetry_interval_s
        logger.info("settings changed by command: %s", dict(changes))

    def _models_changed(self) -> None:
        self._events.put(("models", None))

    # -- over-the-air model updates ----------------------------------------------------
    def _build_ota(self) -> tuple[Any, Any]:
        """The updater and its thread, when a trusted key is configured (else updates are refused)."""
        keys = self.settings.trusted_keys
        if keys is None:
            return None, None
        from edge_agent.bootstrap import build_store
        from edge_agent.runtime.backends import BackendOptions
        from edge_agent.sync.ota import OtaSettings, OtaUpdater
        from edge_agent.sync.ota_runner import OtaRunner, StoreActivator

        store = build_store(self.config)
        activator = StoreActivator(
            store, BackendOptions(self.config.intra_op_threads, self.config.inter_op_threads)
        )
        s = self.settings
        ota_settings = OtaSettings.in_data_dir(
            Path(self.config.data_dir),
            keys,
            base_url=s.artifact_base_url,
            max_artifact_bytes=s.max_artifact_mb * 1024 * 1024,
            timeout_s=s.download_timeout_s,
            attempts=s.download_attempts,
            device=self.device,
        )
        updater = OtaUpdater(store, activator, ota_settings, self._publish_outcome)
        return updater, OtaRunner(updater)

    def _report_shadow(self) -> None:
        """Shadow figures changed since the last report: models/reported again, with the last outcome."""
        from edge_agent.sync.ota_runner import read_shadow

        shadow = read_shadow(Path(self.config.data_dir) / "shadow")
        if shadow == self._shadow_sent:
            return
        try:
            self.publish("models_reported", self._reported(shadow))
            self._shadow_sent = shadow
        except (MqttError, EdgeAgentError) as exc:
            logger.warning("shadow figures not published: %s", exc.message)

    def _publish_outcome(self, outcome: UpdateOutcome) -> None:
        """Runs on the OTA thread: every step of an update goes out on models/reported (retained)."""
        self._last_outcome = outcome
        self.publish("models_reported", self._reported())
        if outcome.state in ("active", "rolled_back"):
            self._models_changed()

    def _reported(self, shadow: dict[str, ShadowReport] | None = None) -> ModelsReported:
        """The whole retained report: active models, the last update outcome, the staged versions'
        shadow figures and benchmark figures (a retained report replaces the previous one)."""
        from edge_agent.runtime import bench  # numpy and the protocol only: no inference runtime
        from edge_agent.sync.ota_runner import read_shadow

        figures = bench.latest(self.config.data_dir)
        if shadow is None:
            shadow = read_shadow(Path(self.config.data_dir) / "shadow")
        return ModelsReported(
            device=self.device,
            models=self.active_models(),
            last_update=self._last_outcome,
            ts=time.time(),
            shadow=shadow,
            bench=figures or None,
        )

    def _report_bench(self) -> None:
        """Re-publish models/reported when `edge-agent models bench` saved new figures."""
        from edge_agent.runtime import bench

        if not self.link.connected:
            return
        seen = bench.stamp(self.config.data_dir)
        if seen == self._bench_seen:
            return
        if seen:
            try:
                self.publish("models_reported", self._reported())
            except MqttError as exc:
                logger.warning("benchmark figures not reported yet: %s", exc.message)
                return
            except ProtocolError as exc:
                logger.error("benchmark figures not reported: %s", exc.message)
        self._bench_seen = seen


# -- entry points -----------------------------------------------------------------------
def run(config: AgentConfig, args: argparse.Namespace) -> int:
    """The role: ``edge-agent sync [--broker-host H] [--broker-port P] [--drain]``."""
    settings = config.sync
    overrides = {k: v for k in ("broker_host", "broker_port") if (v := getattr(args, k, None)) is not None}
    if overrides:
        settings = with_changes(settings, overrides)
    agent = SyncAgent(config, settings, drain=bool(getattr(args, "drain", False)))

    def on_signal(signum: int, frame: FrameType | None) -> None:
        agent.stop()  # no logging here: a signal handler must not take locks

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return agent.run()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edge_agent.sync.agent", description=__doc__)
    p.add_argument("--config", type=Path, help="TOML config file (also EDGE_CONFIG)")
    p.add_argument("--data-dir", type=Path, help="writable state directory (EDGE_DATA_DIR)")
    p.add_argument("--model-dir", type=Path, help="model store root (EDGE_MODEL_DIR)")
    p.add_argument("--device-id", help="device id (EDGE_DEVICE_ID)")
    p.add_argument("--broker-host", help="MQTT broker host (EDGE_SYNC__BROKER_HOST)")
    p.add_argument("--broker-port", type=int, help="MQTT broker port (EDGE_SYNC__BROKER_PORT)")
    p.add_argument("--drain", action="store_true", help="exit once the outbox is empty and acknowledged")
    p.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        config = with_overrides(
            config, data_dir=args.data_dir, model_dir=args.model_dir, device_id=args.device_id
        )
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else getattr(logging, config.log_level),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        return run(config, args)
    except ConfigError as exc:
        print(exc.message, file=sys.stderr)
        return 3
    except EdgeAgentError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
