"""Failed-login throttling for the dashboard: per client address and per user name.

Within a sliding window of ``WINDOW_S`` seconds, a client address may fail ``PER_CLIENT``
logins and a user name ``PER_USER`` (whatever the address: guessing one account from many
addresses is throttled too). Past either, ``POST /dashboard/login`` answers 429 with a
``Retry-After`` of the seconds until the oldest counted failure leaves the window, without
checking the password. Every attempt counts as a failure from the moment it starts (so a burst
of parallel guesses is counted before any of them is checked); a successful login clears the
failures of its address and user. The
counts live in the API process (a restart forgets them); at most ``MAX_KEYS`` addresses and
names are tracked, the oldest dropped first, so a flood of made-up names cannot grow memory.
Behind a proxy the address is the client's only when the proxy is trusted (``trusted_proxies``).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

WINDOW_S = 300.0
PER_CLIENT = 20
PER_USER = 5
MAX_KEYS = 10_000


class LoginThrottle:
    def __init__(
        self,
        *,
        per_client: int = PER_CLIENT,
        per_user: int = PER_USER,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = {"client": per_client, "user": per_user}
        self.window_s = window_s
        self.clock = clock
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def attempt(self, client: str, user: str) -> int | None:
        """None: go ahead (the attempt is counted as a failure until :meth:`succeeded`);
        else the whole seconds to wait before this client may try this user again."""
        now = self.clock()
        waits = []
        for key in (("client", client), ("user", user)):
            times = self._recent(key, now)
            if len(times) >= self.limits[key[0]]:
                waits.append(times[-self.limits[key[0]]] + self.window_s - now)
        if waits:
            return max(1, math.ceil(max(waits)))
        self._count(client, user, now)
        return None

    def _count(self, client: str, user: str, now: float) -> None:
        for key in (("client", client), ("user", user)):
            times = self._recent(key, now)
            times.append(now)
            self._failures[key] = times
            self._failures.move_to_end(key)
        while len(self._failures) > MAX_KEYS:
            self._failures.popitem(last=False)

    def succeeded(self, client: str, user: str) -> None:
        self._failures.pop(("client", client), None)
        self._failures.pop(("user", user), None)
