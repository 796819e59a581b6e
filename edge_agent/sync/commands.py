"""Commands from the cloud (``edge/{device}/cmd``): validate, execute at most once, reply.

Every command that carries an id gets a ``CommandReply`` with that id, also a
malformed or unknown one (when its id can be read at all). A command id is
claimed in SQLite before the command runs, so a command delivered twice (QoS 1
allows it, and so does a cloud that re-sends) runs once; the duplicate gets
the stored reply of the first run.

Adding a command = a name in ``protocol.CommandName`` + one handler in ``HANDLERS``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.config import AgentConfig
from edge_agent.errors import ConfigError, EdgeAgentError, InvalidInput
from edge_agent.storage import Storage
from edge_agent.sync.mqtt import Message
from edge_agent.sync.protocol import (
    MAX_PAYLOAD_BYTES,
    SCHEMA_VERSION,
    Command,
    CommandName,
    CommandReply,
    ProtocolError,
    decode,
)
from edge_agent.sync.settings import RUNTIME_SETTINGS

logger = logging.getLogger(__name__)

COMMAND_NAMES: tuple[str, ...] = get_args(CommandName)
BATCH_TRIGGER = "batch.trigger"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True, slots=True)
class CommandContext:
    """What handlers may touch; the agent supplies the callables."""

    config: AgentConfig
    storage: Storage
    status: Callable[[], dict[str, Any]]
    apply_settings: Callable[[Mapping[str, Any]], None]
    models_changed: Callable[[], None]
    ota: Any = None  # the OtaUpdater when signed updates are configured: no local version switch then


_A = TypeVar("_A", bound=BaseModel)


class _NoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _ModelArgs(_NoArgs):
    model: str = Field(min_length=1, description="Model name.")


class _ActivateArgs(_ModelArgs):
    version: str = Field(min_length=1, description="Version to self-test and activate.")


def _args(model: type[_A], args: Mapping[str, Any]) -> _A:
    try:
        return model.model_validate(args)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise InvalidInput(f"invalid args: {problems}") from None


# -- handlers ---------------------------------------------------------------------------
def _store(ctx: CommandContext) -> Any:
    from edge_agent.runtime.store import ModelStore  # numpy, no runtime library

    return ModelStore(ctx.config.model_dir, ctx.config.store_state_path)


def _backend_options(ctx: CommandContext) -> Any:
    from edge_agent.runtime.backends import BackendOptions

    return BackendOptions(ctx.config.intra_op_threads, ctx.config.inter_op_threads)


def ping(ctx: CommandContext, args: Mapping[str, Any]) -> dict[str, Any]:
    _args(_NoArgs, args)
    return {"pong": True, "ts": time.time()}


def status(ctx: CommandContext, args: Mapping[str, Any]) -> dict[str, Any]:
    _args(_NoArgs, args)
    return ctx.status()


def list_models(ctx: CommandContext, args: Mapping[str, Any]) -> dict[str, Any]:
    _args(_NoArgs, args)
    store = _store(ctx)
    models = []
    for name in store.names():
        active = store.active_version(name)
        m = store.manifest(name, active)
        models.append(
            {
                "name": name,
                "versions": store.versions(name),
                "active_version": active,
                "backend": m.backend,
                "task": m.task,
            }
        )
    return {"models": models}


class SignedUpdatesOnly(EdgeAgentError):
    """A local version switch asked of a device that takes versions from signed metadata only."""

    status = 409
    code = "signed_update_required"


def _local_switch_allowed(ctx: CommandContext, what: str, model: str) -> None:
    """With signed updates configured (``trusted_keys``), which version runs is decided by signed
    metadata alone: a command over MQTT (anyone with the broker credentials) cannot switch it."""
    if ctx.ota is not None:
        raise SignedUpdatesOnly(
            f"{what} refused: this device takes model versions only from signed update metadata "
            f"(trusted_keys is set); go back with a signed rollback: `edge-console rollback "
            f"{ctx.ota.settings.device or 'DEVICE'} {model} [--version V]` (POST /devices/{{id}}/rollback)"
        )


def activate(ctx: CommandContext, args: Mapping[str, Any]) -> dict[str, Any]:
    """Verify and self-test the version in this process, then switch the store's pointer
    (refused when signed updates are configured)."""
    from edge_agent.sync.ota_runner import StoreActivator

    a = _args(_ActivateArgs, args)
    _local_switch_allowed(ctx, "activate", a.model)
    report = StoreActivator(_store(ctx), _backend_options(ctx)).activate(a.model, a.version)
    ctx.models_changed()
    return {"model": a.model, "version": a.version, "self_test": report.message}


def rollback(ctx: CommandContext, args: Mapping[str, Any]) -> dict[str, Any]:
    from edge_agent.sync.ota_runner import StoreActivator

    a = _args(_ModelArgs, args)
    _local_switch_allowed(ctx, "rollback", a.model)
    store = _store(ctx)
    previous = store.active_version(a.model)
    target = StoreActivator(store, _backend_options(ctx)).rollback(a.model)
    ctx.models_changed()
    return {"model": a.model, "version": target, "previous": previous}


def run_batch(ctx: CommandContext, args: Mapping[str, Any]) -> dict[str, Any]:
    """Signal the batch role by writing ``<data_dir>/batch.trigger`` (its args passed through)."""
    from edge_agent.runtime.store import atomic_write

    path = ctx.config.data_dir / BATCH_TRIGGER
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"requested": time.time(), "args": dict(args)}).encode())
    return {"trigger": str(path)}


def set_config(ctx: CommandContext, args: Mapping[str, Any]) -> dict[str, Any]:
    """Change run-time-safe settings of this role (until it restarts); all or nothing."""
    allowed = sorted(RUNTIME_SETTINGS | {"log_level"})
    if not args:
        raise InvalidInput(f"set_config needs at least one setting; changeable at run time: {allowed}")
    refused = sorted(set(args) - set(allowed))
    if refused:
        raise InvalidInput(
            f"cannot change {refused} at run time (edit the configuration and restart the role); "
            f"changeable at run time: {allowed}"
        )
    changes = dict(args)
    level = changes.pop("log_level", None)
    if level is not None and level not in LOG_LEVELS:
        raise InvalidInput(f"log_level must be one of {list(LOG_LEVELS)}, not {level!r}")
    try:
        if changes:
            ctx.apply_settings(changes)
    except ConfigError as exc:
        raise InvalidInput("; ".join(exc.problems)) from None
    if level is not None:
        logging.getLogger().setLevel(level)
        logger.info("log level set to %s by command", level)
    return {"applied": dict(args)}


Handler = Callable[[CommandContext, Mapping[str, Any]], dict[str, Any]]
HANDLERS: dict[str, Handler] = {
    "ping": ping,
    "status": status,
    "list_models": list_models,
    "activate": activate,
    "rollback": rollback,
    "run_batch": run_batch,
    "set_config": set_config,
}


# -- at most once -----------------------------------------------------------------------
class CommandLog:
    """Ids of commands received, with their replies (table ``sync_commands``)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage  # the table is created by storage.py's migrations

    def claim(self, cmd: Command) -> CommandReply | None:
        """None if ``cmd`` is new (now claimed); else the reply to send instead of running it again."""
        with self.storage.transaction() as conn:
            row = conn.execute("SELECT received, reply FROM sync_commands WHERE id = ?", (cmd.id,)).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO sync_commands (id, name, received) VALUES (?, ?, ?)",
                    (cmd.id, cmd.name, time.time()),
                )
                return None
        if row["reply"] is not None:
            return CommandReply.model_validate_json(row["reply"])
        return CommandReply(
            device=cmd.device,
            id=cmd.id,
            ok=False,
            error=f"command {cmd.id} was received at {row['received']:.3f} and did not finish "
            "(the agent stopped while running it); it is not run again",
            result={"code": "interrupted"},
            ts=time.time(),
        )

    def finish(self, reply: CommandReply) -> None:
        with self.storage.transaction() as conn:
            conn.execute(
                "UPDATE sync_commands SET finished = ?, reply = ? WHERE id = ?",
                (time.time(), reply.model_dump_json(), reply.id),
            )

    def prune(self, older_than_s: float) -> int:
        with self.storage.transaction() as conn:
            cur = conn.execute("DELETE FROM sync_commands WHERE received < ?", (time.time() - older_than_s,))
            return int(cur.rowcount)


# -- dispatch ---------------------------------------------------------------------------
def _error(device: str, cid: str, exc: EdgeAgentError) -> CommandReply:
    return CommandReply(
        device=device, id=cid, ok=False, error=exc.message, result={"code": exc.code}, ts=time.time()
    )


def _salvage(payload: bytes) -> tuple[str | None, str | None]:
    """(id, unknown command name) of a command that failed validation, where they can be read."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None, None
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, None
    if not isinstance(doc, dict):
        return None, None
    cid, name = doc.get("id"), doc.get("name")
    cid = cid if isinstance(cid, str) and 1 <= len(cid) <= 64 else None
    unknown = isinstance(name, str) and name not in COMMAND_NAMES and doc.get("v") == SCHEMA_VERSION
    return cid, (name if unknown else None)


class Commands:
    def __init__(self, ctx: CommandContext, device: str) -> None:
        self.ctx = ctx
        self.device = device
        self.log = CommandLog(ctx.storage)
        self.rejected = 0

    def handle(self, message: Message) -> CommandReply | None:
        """The reply to send for one cmd message (None when it has no readable id)."""
        try:
            _, msg = decode(message.topic, message.payload)
        except ProtocolError as exc:
            self.rejected += 1
            cid, unknown = _salvage(message.payload)
            problem = exc
            if unknown is not None:
                known = ", ".join(COMMAND_NAMES)
                problem = ProtocolError(f"unknown command {unknown[:64]!r}; known: {known}")
            logger.warning("rejected command %s: %s", cid or "(no readable id)", problem.message[:500])
            return _error(self.device, cid, problem) if cid else None
        if not isinstance(msg, Command):  # decode maps the cmd topic to Command; never taken
            return None
        previous = self.log.claim(msg)
        if previous is not None:
            logger.info("command %s (%s) delivered again; not run again", msg.id, msg.name)
            return previous
        reply = self._execute(msg)
        self.log.finish(reply)
        return reply

    def _execute(self, cmd: Command) -> CommandReply:
        started = time.monotonic()
        try:
            result = HANDLERS[cmd.name](self.ctx, cmd.args)
        except EdgeAgentError as exc:
            logger.warning("command %s (%s) failed: %s", cmd.id, cmd.name, exc.message)
            return _error(self.device, cmd.id, exc)
        except Exception as exc:
            logger.exception("command %s (%s) crashed", cmd.id, cmd.name)
            return _error(self.device, cmd.id, EdgeAgentError(f"internal error: {type(exc).__name__}: {exc}"))
        logger.info("command %s (%s) done in %.3f s", cmd.id, cmd.name, time.monotonic() - started)
        return CommandReply(device=self.device, id=cmd.id, ok=True, result=result, ts=time.time())
