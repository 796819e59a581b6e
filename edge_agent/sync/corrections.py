"""Send the clock corrections waiting in ``clock_corrections`` (``retention.correct_unsynced``
writes them in the transaction that corrects the results' times).

Each is sent as a ``ClockCorrection`` message, one per boot and seq range, until a ``ResultsAck``
names its id; then its row is deleted (at a full disk: once a write fits again; meanwhile it is
not sent again). Entries are few (one per clock synchronisation), so what is in flight is kept in
memory with its re-send deadline and nothing is written when one is sent: a restart sends them
again (the cloud applies one once), and a full disk does not stop them. The table is read only
when the ``clock_corrections`` counter moved (a correction was queued, by this process or the
gateway's) and once at start.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable

from pydantic import ValidationError

from edge_agent.retention import CLOCK_CORRECTIONS
from edge_agent.storage import Storage, StorageError
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
        self._acked: set[str] = set()  # acknowledged, row not deleted yet (the disk was full)
        self.sent = 0

    @property
    def waiting(self) -> int:
        return len(self._due)

    def send_due(self) -> int:
        """Send the corrections due (new, or unacknowledged past the timeout); how many were sent."""
        if self._acked:
            self._forget()
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
                self._acked.add(cid)
        if self._acked:
            self._forget()

    def _forget(self) -> None:
        done = sorted(self._acked)
        try:
            with self.storage.transaction(what="forgetting acknowledged clock corrections") as conn:
                conn.executemany("DELETE FROM clock_corrections WHERE id = ?", [(c,) for c in done])
        except StorageError as exc:  # a full disk: not sent again, deleted once a write fits
            logger.warning("acknowledged clock corrections not deleted yet: %s", exc)
            return
        self._acked.difference_update(done)

    def _load(self) -> None:
        rows = self.storage.conn.execute("SELECT id, body FROM clock_corrections ORDER BY created").fetchall()
        for cid, body in rows:
            if cid in self._due or cid in self._acked:
                continue
            try:
                msg = ClockCorrection(device=self.device, id=cid, **json.loads(body))
            except (ValueError, TypeError, ValidationError) as exc:  # never sendable: never retried
                logger.error("clock correction %s is corrupt (%s); not sent", cid, exc)
                continue
            self._due[cid] = (encode(msg), 0.0)
