"""Send the clock corrections waiting in the outbox (``retention.correct_unsynced`` writes them).

A correction is an outbox entry of kind ``clock`` (the results' own sender, ``outbox.py``, reads
past it) sent as a ``ClockCorrection`` message, one per boot and seq range, until a ``ResultsAck``
names its id: then ``Outbox.acknowledge`` deletes it like any entry. Entries are few (one per
clock synchronisation), so what is in flight is kept in memory with its re-send deadline and
nothing is written when one is sent: a restart sends them again (the cloud applies one once),
and a full disk does not stop them. The outbox is read only when the ``clock_corrections``
counter moved (a correction was queued, by this process or the gateway's) and once at start.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable

from pydantic import ValidationError

from edge_agent.retention import CLOCK_CORRECTIONS, CLOCK_KIND
from edge_agent.storage import Storage
from edge_agent.sync.protocol import ClockCorrection, encode

logger = logging.getLogger(__name__)


class Corrections:
    def __init__(
        self,
        storage: Storage,
        device: str,
        send: Callable[[bytes], None],
        ack_timeout_s: Callable[[], float],
    ) -> None:
        self.storage = storage
        self.device = device
        self._send = send
        self._ack_timeout_s = ack_timeout_s
        self._seen: int | None = None  # the counter value the outbox was last read at
        self._due: dict[str, tuple[bytes, float]] = {}  # id -> (payload, when to send it, monotonic)
        self.sent = 0

    @property
    def waiting(self) -> int:
        return len(self._due)

    def send_due(self) -> int:
        """Send the corrections due (new, or unacknowledged past the timeout); how many were sent."""
        made = self.storage.counter(CLOCK_CORRECTIONS)
        if made != self._seen:
            self._seen = made
            self._load()
        now, sent = time.monotonic(), 0
        for cid, (payload, due) in list(self._due.items()):
            if due <= now:
                self._send(payload)  # MqttError: the loop retries, the entry stays due
                self._due[cid] = (payload, now + self._ack_timeout_s())
                sent += 1
        self.sent += sent
        return sent

    def acknowledged(self, ids: Iterable[str]) -> None:
        """The cloud stored (or refused for good) these outbox entries: stop sending them."""
        for cid in ids:
            if self._due.pop(cid, None) is not None:
                logger.info("clock correction %s acknowledged by the cloud", cid)

    def _load(self) -> None:
        rows = self.storage.conn.execute(
            "SELECT id, body FROM outbox WHERE kind = ? ORDER BY seq", (CLOCK_KIND,)
        ).fetchall()
        for cid, body in rows:
            if cid in self._due:
                continue
            try:
                msg = ClockCorrection(device=self.device, id=cid, **json.loads(body))
            except (ValueError, TypeError, ValidationError) as exc:  # never sendable: never retried
                logger.error("clock correction %s in the outbox is corrupt (%s); not sent", cid, exc)
                continue
            self._due[cid] = (encode(msg), 0.0)
