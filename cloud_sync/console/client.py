"""ConsoleClient: the typed library behind ``edge-console``, over the cloud HTTP API.

Every console command is a thin wrapper over one method here; this module never
prints and never exits. httpx errors and the API's JSON errors are translated
once, in :meth:`ConsoleClient._request`, into the :class:`CloudSyncError` tree
(``NotFound``, ``InvalidRequest``, ``Unauthorized``, ``BrokerError``...) plus the
console's own errors below.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from cloud_sync.config import CloudConfig
from cloud_sync.errors import BrokerError, CloudSyncError, InvalidRequest, NotFound, StoreError, Unauthorized
from edge_agent.sync.protocol import ModelBench

DEFAULT_API = f"http://127.0.0.1:{CloudConfig.model_fields['api_port'].default}"
HTTP_TIMEOUT_S = 10.0
MAX_LONG_POLL_S = 60.0  # the API's cap on GET /commands/{id}?wait=
PAGE_LIMIT = 1000  # the API's cap on GET /results?limit=
# a device's part in a deployment ends in one of these; only "active" is a success ("superseded":
# a newer deployment took the device over before this one finished)
TERMINAL_STATES = frozenset({"staged", "active", "failed", "rolled_back", "superseded"})

_ERRORS_BY_CODE: dict[str, type[CloudSyncError]] = {
    "not_found": NotFound,
    "invalid_request": InvalidRequest,
    "unauthorized": Unauthorized,
    "broker_unavailable": BrokerError,
    "store_unavailable": StoreError,
    "schema_too_new": StoreError,
}
_ERRORS_BY_STATUS: dict[int, type[CloudSyncError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    404: NotFound,
    413: InvalidRequest,
    422: InvalidRequest,
}


# -- errors ---------------------------------------------------------------------------------
class ConsoleError(CloudSyncError):
    """Root of the errors only the console raises."""

    code = "console_error"


class ApiUnreachable(ConsoleError):
    """No HTTP answer from the API: refused, DNS, TLS, or timed out."""

    status = 503
    code = "api_unreachable"


class ApiError(ConsoleError):
    """The API answered with something this console does not expect (status or shape)."""

    status = 502
    code = "api_error"


class CommandTimeout(ConsoleError):
    """The device did not reply in time (it may be offline; the broker may still deliver it later)."""

    status = 504
    code = "command_timeout"


class CommandFailed(ConsoleError):
    """The command could not be delivered, or the device replied with an error."""

    code = "command_failed"


class DeploymentTimeout(ConsoleError):
    """Some devices were still updating when the wait ran out."""

    status = 504
    code = "deployment_timeout"


# -- what the API returns ------------------------------------------------------------------------
class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Telemetry(_Model):
    ts: float
    metrics: dict[str, float] = {}


class Device(_Model):
    id: str
    online: bool | None = None
    first_seen: float | None = None
    last_seen: float
    agent_version: str | None = None
    models: dict[str, str] | None = None
    reported_models: dict[str, str] | None = None
    last_update: dict[str, Any] | None = None  # the last model update outcome it reported
    telemetry: Telemetry | None = None  # the latest snapshot, when asked for

    @property
    def update_summary(self) -> str | None:
        """'iris@3 failed: rollback_refused' (the reason's code only), or None."""
        u = self.last_update
        if not u:
            return None
        code = str(u.get("reason") or "").split(":", 1)[0]
        text = f"{u.get('model')}@{u.get('version')} {u.get('state')}"
        return f"{text}: {code}" if code and u.get("state") == "failed" else text

    @property
    def outbox_depth(self) -> int | None:
        depth = None if self.telemetry is None else self.telemetry.metrics.get("outbox_depth")
        return None if depth is None else int(depth)


class BenchReport(_Model):
    """One device's latest ``edge-agent models bench`` figures for one model."""

    device: str
    model: str
    version: str
    ts: float
    received: float | None = None
    figures: ModelBench


class Result(_Model):
    id: str
    device: str
    source: str | None = None
    ref: str | None = None
    model: str
    version: str
    label: str | None = None
    created: float
    received: float | None = None
    body: dict[str, Any] = {}
    time_flag: str | None = None  # unsynced / implausible / corrected: see device_created
    device_created: float | None = None

    @property
    def clock_note(self) -> str:
        """'' for a trusted device time; else the flag, and by how much a corrected time moved."""
        if self.time_flag == "corrected" and self.device_created is not None:
            return f"corrected by {self.created - self.device_created:+.0f} s"
        return self.time_flag or ""

    @property
    def score(self) -> float | None:
        score = self.body.get("score")
        return float(score) if isinstance(score, int | float) else None


class Reply(_Model):
    command_id: str
    device: str
    name: str
    ok: bool
    result: dict[str, Any] | None = None
    error: str | None = None
    ts: float | None = None

    def raise_for_error(self) -> Reply:
        if not self.ok:
            raise CommandFailed(f"{self.device} answered {self.name} with an error: {self.error}")
        return self


class Rollout(_Model):
    """One device's part in a deployment."""

    device: str
    state: str  # pending, downloading, verifying, then one of TERMINAL_STATES
    progress: float | None = None
    reason: str | None = None
    updated: float | None = None

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES


class Deployment(_Model):
    id: str
    model: str
    version: str
    created: float
    devices: tuple[Rollout, ...] = ()

    @property
    def done(self) -> bool:
        return all(r.done for r in self.devices)

    @property
    def failed(self) -> tuple[Rollout, ...]:
        """The devices that finished without running the new version."""
        return tuple(r for r in self.devices if r.done and r.state != "active")


@dataclass(frozen=True, slots=True)
class ResultFilter:
    device: str | None = None
    model: str | None = None
    label: str | None = None
    since: float | None = None  # created at or after (Unix time)
    until: float | None = None  # created before

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True, slots=True)
class ResultPage:
    items: list[Result] = field(default_factory=list)
    next_cursor: str | None = None


_M = TypeVar("_M", bound=_Model)


def _parse(model: type[_M], data: Any, what: str) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ApiError(f"unexpected answer to {what}: {where}: {first['msg']}") from None


# -- the client -------------------------------------------------------------------------------------
class ConsoleClient:
    """The cloud API for an operator: devices, results, commands, deployments."""

    def __init__(
        self,
        base_url: str = DEFAULT_API,
        token: str | None = None,
        *,
        timeout_s: float = HTTP_TIMEOUT_S,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)
        self._timeout_s = timeout_s

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ConsoleClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        timeout_s: float | None = None,
    ) -> Any:
        try:
            r = self._http.request(
                method, path, params=params, json=json, timeout=timeout_s or self._timeout_s
            )
        except httpx.TimeoutException:
            raise ApiUnreachable(
                f"the cloud API at {self.base_url} did not answer {method} {path} in time"
            ) from None
        except httpx.HTTPError as exc:
            raise ApiUnreachable(f"cannot reach the cloud API at {self.base_url}: {exc}") from None
        try:
            data = r.json()
        except ValueError:
            data = None
        if r.is_success and data is not None:
            return data
        if r.is_success:
            raise ApiError(f"{method} {path}: the answer is not JSON (is {self.base_url} the cloud API?)")
        error = data.get("error") if isinstance(data, dict) else None
        code = data.get("code") if isinstance(data, dict) else None
        if r.status_code == 405:
            raise ApiError(f"the cloud API at {self.base_url} does not offer {method} {path} (HTTP 405)")
        cls = _ERRORS_BY_CODE.get(str(code)) or _ERRORS_BY_STATUS.get(r.status_code, ApiError)
        if error is None or code == "http_error":
            error = f"{method} {path}: HTTP {r.status_code} {error or r.reason_phrase}"
        raise cls(str(error), status=r.status_code)

    # -- devices -----------------------------------------------------------------------------
    def devices(self, *, online: bool | None = None, telemetry: bool = True) -> list[Device]:
        """Every device the cloud knows; with ``telemetry`` each carries its latest snapshot."""
        params = {} if online is None else {"online": online}
        rows = self._request("GET", "/devices", params=params).get("devices", [])
        devices = [_parse(Device, row, "GET /devices") for row in rows]
        if not telemetry:
            return devices
        return [d.model_copy(update={"telemetry": self.latest_telemetry(d.id)}) for d in devices]

    def device(self, device_id: str) -> Device:
        row = self._request("GET", f"/devices/{device_id}", params={"history": 0})
        device = _parse(Device, row, f"GET /devices/{device_id}")
        return device.model_copy(update={"telemetry": self.latest_telemetry(device_id)})

    def latest_telemetry(self, device_id: str) -> Telemetry | None:
        rows = self._request("GET", "/telemetry", params={"device": device_id, "limit": 1})["telemetry"]
        return _parse(Telemetry, rows[0], "GET /telemetry") if rows else None

    def bench(self, device: str | None = None, model: str | None = None) -> list[BenchReport]:
        """The latest on-device benchmark figures per device and model."""
        params = {k: v for k, v in (("device", device), ("model", model)) if v is not None}
        rows = self._request("GET", "/bench", params=params).get("bench", [])
        return [_parse(BenchReport, row, "GET /bench") for row in rows]

    # -- results -------------------------------------------------------------------------------
    def results(
        self,
        filters: ResultFilter | None = None,
        limit: int = 100,
        cursor: str | None = None,
        *,
        oldest_first: bool = False,
    ) -> ResultPage:
        """One page of stored results (newest first unless ``oldest_first``)."""
        params = (filters or ResultFilter()).params() | {"limit": limit}
        params |= {"order": "asc" if oldest_first else "desc"} | ({"cursor": cursor} if cursor else {})
        data = self._request("GET", "/results", params=params)
        items = [_parse(Result, row, "GET /results") for row in data.get("results", [])]
        return ResultPage(items, data.get("next_cursor"))

    def tail_results(
        self,
        filters: ResultFilter | None = None,
        *,
        backlog: int = 10,
        poll_s: float = 1.0,
        lookback_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> Iterator[Result]:
        """The newest ``backlog`` results, then each new one as it is stored, forever.

        The API orders results by the device's ``created`` time, and a device that was offline
        uploads results created before others already shown; so each poll re-reads the results
        created in the last ``lookback_s`` seconds (by ``clock``) and yields those not seen yet.
        A result created earlier than that when it arrives (a long backlog, a device clock far
        behind) is not yielded.
        """
        filters = filters or ResultFilter()
        # what exists now, before the backlog query: a result stored in between is then either in
        # the backlog or yielded by the first poll, never lost
        seen = {r.id: r.created for r in self._window(filters, self._start(filters, clock(), lookback_s))}
        recent = self.results(filters, limit=backlog).items if backlog > 0 else []
        for r in reversed(recent):
            seen[r.id] = r.created
            yield r
        while True:
            time.sleep(poll_s)
            since = self._start(filters, clock(), lookback_s)
            for r in self._window(filters, since):
                if r.id not in seen:
                    seen[r.id] = r.created
                    yield r
            seen = {rid: created for rid, created in seen.items() if created >= since}

    @staticmethod
    def _start(filters: ResultFilter, now: float, lookback_s: float) -> float:
        return now - lookback_s if filters.since is None else max(now - lookback_s, filters.since)

    def _window(self, filters: ResultFilter, since: float) -> Iterator[Result]:
        window = ResultFilter(filters.device, filters.model, filters.label, since, filters.until)
        cursor: str | None = None
        while True:
            page = self.results(window, PAGE_LIMIT, cursor, oldest_first=True)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # -- commands ---------------------------------------------------------------------------------
    def send(self, device: str, name: str, args: dict[str, Any] | None = None, wait_s: float = 10.0) -> Reply:
        """Send a command and wait for the device's reply (an error reply is returned, not raised)."""
        body = {"device": device, "name": name, "args": args or {}}
        command_id = str(self._request("POST", "/commands", json=body)["id"])
        deadline = time.monotonic() + wait_s
        while True:
            wait = min(max(0.0, deadline - time.monotonic()), MAX_LONG_POLL_S)
            cmd = self._request(
                "GET", f"/commands/{command_id}", params={"wait": wait}, timeout_s=wait + self._timeout_s
            )
            if cmd.get("reply") is not None:
                answer = cmd["reply"] | {"command_id": command_id, "device": device, "name": name}
                return _parse(Reply, answer, f"GET /commands/{command_id}")
            if cmd.get("state") == "failed":
                raise CommandFailed(f"{name} could not be sent to {device}: {cmd.get('error')}")
            if time.monotonic() >= deadline:
                raise CommandTimeout(
                    f"no reply from {device} to {name} within {wait_s:g} s (command {command_id}; "
                    "is the device online?)",
                    command_id=command_id,
                )

    def rollback(self, device: str, model: str, version: str | None = None) -> tuple[str, str, str]:
        """Sign and send ``device``'s going back to an older ``version`` of ``model`` (default: the newest
        earlier one it ran): ``POST /devices/{id}/rollback``. (deployment id, from version, to version)."""
        body = {"model": model} | ({"version": version} if version is not None else {})
        data = self._request("POST", f"/devices/{device}/rollback", json=body)
        back = data.get("rollback") or {}
        return str(data["id"]), str(back.get("from", "?")), str(back.get("to", data.get("version", "?")))

    # -- deployments -----------------------------------------------------------------------------------
    def deploy(
        self, model: str, version: str, devices: Sequence[str] | None = None, *, all_devices: bool = False
    ) -> str:
        """Start rolling ``model`` ``version`` out to ``devices`` (or every device); its id."""
        if all_devices == (devices is not None):
            raise InvalidRequest("deploy to a list of devices or to all devices: one of the two")
        if devices is not None and not devices:
            raise InvalidRequest("deploy to at least one device")
        target: dict[str, Any] = {"all": True} if all_devices else {"devices": list(devices or [])}
        data = self._request("POST", "/deployments", json={"model": model, "version": version} | target)
        return str(data["id"])

    # -- staged rollouts ---------------------------------------------------------------------------------
    def start_rollout(
        self,
        model: str,
        version: str,
        *,
        devices: Sequence[str] | None = None,
        groups: Sequence[str] | None = None,
        thresholds: dict[str, Any],
    ) -> dict[str, Any]:
        """Start a staged rollout to ``devices``, or group by group, or to every device; the document."""
        if devices and groups:
            raise InvalidRequest("name devices or groups, not both")
        target: dict[str, Any] = (
            {"devices": list(devices)} if devices else {"groups": list(groups)} if groups else {"all": True}
        )
        body = {"model": model, "version": version, "thresholds": thresholds} | target
        return dict(self._request("POST", "/rollouts", json=body))

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/rollouts/{rollout_id}"))

    def rollouts(self, limit: int = 20) -> list[dict[str, Any]]:
        return list(self._request("GET", "/rollouts", params={"limit": limit})["rollouts"])

    def act_on_rollout(self, rollout_id: str, action: str) -> dict[str, Any]:
        """``pause``, ``resume`` or ``abort``."""
        return dict(self._request("POST", f"/rollouts/{rollout_id}/{action}"))

    def deployment(self, deployment_id: str) -> Deployment:
        data = self._request("GET", f"/deployments/{deployment_id}")
        return _parse(Deployment, data, f"GET /deployments/{deployment_id}")

    def watch_deployment(
        self, deployment_id: str, *, poll_s: float = 1.0, timeout_s: float = 600.0
    ) -> Iterator[Deployment]:
        """Snapshots until every device has finished (TERMINAL_STATES); then DeploymentTimeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            snapshot = self.deployment(deployment_id)
            yield snapshot
            if snapshot.done:
                return
            if time.monotonic() >= deadline:
                waiting = ", ".join(f"{r.device} ({r.state})" for r in snapshot.devices if not r.done)
                raise DeploymentTimeout(
                    f"deployment {deployment_id} unfinished after {timeout_s:g} s: {waiting}",
                    deployment=deployment_id,
                )
            time.sleep(poll_s)
