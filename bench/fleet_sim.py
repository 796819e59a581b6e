"""Many simulated devices in one process: real MQTT 5 connections speaking the real protocol.

Each device is one aiomqtt client (its own TCP connection, client id ``sim-<device>``) on one
asyncio loop, and does what the device agent's sync role does on the wire
(edge_agent/sync/protocol.py): a retained offline Status as its Last Will, a retained online
Status (birth) and a retained ModelsReported on connecting, Telemetry every ``telemetry_s``
(with its outbox depth), results into an in-memory outbox sent in batches and kept until the
cloud's ResultsAck names their ids (re-sent after ``resend_s`` when no ack came, as the agent's
SQLite outbox does), and a CommandReply to every Command. A broker that goes away is
reconnected to, with the outbox intact. The device agent itself keeps paho; this is a load
generator.

Run by bench/fleet.py as a subprocess (one or more, a slice of the fleet each):

    python bench/fleet_sim.py --port 1883 --devices 1000 --first 0 --seconds 60 --out stats.json

It produces for ``--seconds`` once every device is started (nothing during the ramp), then
stops producing and drains its outboxes (up to ``--drain-s``), then writes JSON: devices
connected, results produced and acknowledged, the created -> acknowledged latencies (an ack is
sent after the cloud's commit), re-sent batches, commands replied, and every result id produced
(for counting lost and stored-twice by id).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edge_agent.sync import protocol  # noqa: E402

MAX_BATCH = 100


@dataclass
class Stats:
    connected: int = 0  # devices connected at least once
    connections: int = 0  # connects, reconnects included
    produced: int = 0
    acked: int = 0
    rejected: int = 0
    resent_batches: int = 0
    commands: int = 0
    latencies: list[float] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    outbox_left: int = 0


@dataclass
class Pending:
    record: protocol.ResultRecord
    sent_at: float | None = None


class Device:
    def __init__(self, name: str, host: str, port: int, stats: Stats, args: argparse.Namespace) -> None:
        self.name, self.host, self.port, self.stats, self.args = name, host, port, stats, args
        self.outbox: dict[str, Pending] = {}
        self.seen = False

    def produce(self) -> None:
        now = time.time()
        record = protocol.ResultRecord(
            id=uuid.uuid4().hex,
            source="fleet-sim",
            model="iris",
            version="1",
            created=now,
            body={"label": random.choice(("setosa", "versicolor", "virginica")), "score": 0.9},
        )
        self.outbox[record.id] = Pending(record)
        self.stats.produced += 1
        self.stats.ids.append(record.id)

    def due(self) -> list[protocol.ResultRecord]:
        now = time.monotonic()
        out: list[protocol.ResultRecord] = []
        for p in self.outbox.values():
            if p.sent_at is None or now - p.sent_at >= self.args.resend_s:
                if p.sent_at is not None and not out:
                    self.stats.resent_batches += 1
                p.sent_at = now
                out.append(p.record)
                if len(out) >= MAX_BATCH:
                    break
        return out

    def on_ack(self, ack: protocol.ResultsAck) -> None:
        now = time.time()
        for rid in ack.ids:
            p = self.outbox.pop(rid, None)
            if p is not None:
                self.stats.acked += 1
                self.stats.latencies.append(now - p.record.created)
        for rid in ack.rejected:
            if self.outbox.pop(rid, None) is not None:
                self.stats.rejected += 1

    async def run(self, producing: asyncio.Event, done: asyncio.Event) -> None:
        topic = protocol.topic
        will = aiomqtt.Will(
            topic(self.name, "status"),
            protocol.encode(protocol.Status(device=self.name, state="offline", ts=time.time())),
            qos=1,
            retain=True,
        )
        while not done.is_set():
            try:
                async with aiomqtt.Client(
                    self.host,
                    self.port,
                    identifier=f"sim-{self.name}",
                    protocol=aiomqtt.ProtocolVersion.V5,
                    will=will,
                    keepalive=60,
                    timeout=30,
                ) as client:
                    self.stats.connections += 1
                    if not self.seen:
                        self.seen = True
                        self.stats.connected += 1
                    await client.subscribe(
                        [(topic(self.name, "results_ack"), 1), (topic(self.name, "cmd"), 1)]
                    )
                    birth = protocol.Status(
                        device=self.name,
                        state="online",
                        agent_version="sim",
                        models={"iris": "1"},
                        ts=time.time(),
                    )
                    await client.publish(
                        topic(self.name, "status"), protocol.encode(birth), qos=1, retain=True
                    )
                    reported = protocol.ModelsReported(device=self.name, models={"iris": "1"}, ts=time.time())
                    await client.publish(
                        topic(self.name, "models_reported"), protocol.encode(reported), qos=1, retain=True
                    )
                    for p in self.outbox.values():
                        p.sent_at = None  # a new connection: send what is pending now
                    listen = asyncio.create_task(self._listen(client))
                    try:
                        await self._talk(client, producing, done)
                    finally:
                        listen.cancel()
                    return
            except aiomqtt.MqttError:
                if done.is_set():
                    return
                await asyncio.sleep(random.uniform(1.0, 3.0))  # the broker went away: back off, reconnect

    async def _listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            try:
                _, msg = protocol.decode(str(message.topic), bytes(message.payload))
            except protocol.ProtocolError:
                continue
            if isinstance(msg, protocol.ResultsAck):
                self.on_ack(msg)
            elif isinstance(msg, protocol.Command):
                reply = protocol.CommandReply(
                    device=self.name, id=msg.id, ok=True, result={"ran": msg.name}, ts=time.time()
                )
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                correlation = getattr(message.properties, "CorrelationData", None)
                if correlation is not None:
                    props.CorrelationData = correlation
                await client.publish(
                    protocol.topic(self.name, "cmd_reply"), protocol.encode(reply), qos=1, properties=props
                )
                self.stats.commands += 1

    async def _talk(self, client: aiomqtt.Client, producing: asyncio.Event, done: asyncio.Event) -> None:
        rate = self.args.rate
        next_result = time.monotonic() + random.expovariate(rate) if rate > 0 else float("inf")
        next_telemetry = time.monotonic() + random.uniform(0, self.args.telemetry_s)
        while not done.is_set():
            now = time.monotonic()
            if not producing.is_set() and rate > 0:  # Poisson: memoryless, so restart the wait
                next_result = now + random.expovariate(rate)
            while producing.is_set() and now >= next_result:
                self.produce()
                next_result += random.expovariate(rate)
            batch = self.due()
            if batch:
                msg = protocol.Results(device=self.name, batch=uuid.uuid4().hex, results=batch)
                await client.publish(protocol.topic(self.name, "results"), protocol.encode(msg), qos=1)
            if now >= next_telemetry:
                metrics = {"outbox_depth": float(len(self.outbox)), "rss_bytes": 50e6}
                t = protocol.Telemetry(device=self.name, ts=time.time(), metrics=metrics)
                await client.publish(protocol.topic(self.name, "telemetry"), protocol.encode(t), qos=1)
                next_telemetry += self.args.telemetry_s
            await asyncio.sleep(self.args.tick_s * random.uniform(0.8, 1.2))


async def main_async(args: argparse.Namespace) -> Stats:
    stats = Stats()
    producing, done = asyncio.Event(), asyncio.Event()
    devices = [
        Device(f"{args.prefix}{i:05d}", args.host, args.port, stats, args)
        for i in range(args.first, args.first + args.devices)
    ]
    loop = asyncio.get_running_loop()
    stop_early = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop_early.set)  # stop producing early: drain, report
    tasks = []
    for i, d in enumerate(devices):  # connect at --ramp per second, not all at once
        tasks.append(asyncio.create_task(d.run(producing, done)))
        if (i + 1) % max(1, int(args.ramp / 10)) == 0:
            await asyncio.sleep(0.1)
    producing.set()  # every device started: the produce window opens (nothing during the ramp)
    end = time.monotonic() + args.seconds
    while time.monotonic() < end and not stop_early.is_set():
        await asyncio.sleep(0.2)
    producing.clear()
    drain_end = time.monotonic() + args.drain_s
    while time.monotonic() < drain_end and any(d.outbox for d in devices):
        await asyncio.sleep(0.5)
    stats.outbox_left = sum(len(d.outbox) for d in devices)
    done.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return stats


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="broker host")
    p.add_argument("--port", type=int, required=True, help="broker port")
    p.add_argument("--devices", type=int, default=100, help="devices in this process")
    p.add_argument("--first", type=int, default=0, help="number of the first device (names are PREFIX%%05d)")
    p.add_argument("--prefix", default="sim-", help="device name prefix")
    p.add_argument("--seconds", type=float, default=60.0, help="seconds of producing results")
    p.add_argument("--rate", type=float, default=0.1, help="results per second per device (Poisson)")
    p.add_argument("--telemetry-s", type=float, default=30.0, help="seconds between telemetry messages")
    p.add_argument("--tick-s", type=float, default=1.0, help="seconds between outbox flushes")
    p.add_argument("--resend-s", type=float, default=15.0, help="re-send an unacknowledged batch after this")
    p.add_argument("--ramp", type=float, default=200.0, help="connections opened per second")
    p.add_argument("--drain-s", type=float, default=90.0, help="seconds to wait for the last acks")
    p.add_argument("--out", type=Path, required=True, help="JSON file for the statistics")
    args = p.parse_args()
    stats = asyncio.run(main_async(args))
    args.out.write_text(json.dumps(stats.__dict__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
