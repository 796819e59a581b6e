"""Commands to devices, published model versions and deployments (both backends)."""

from __future__ import annotations

import json
from typing import Any

from cloud_sync.errors import NotFound
from cloud_sync.store.base import StoreBase
from cloud_sync.store.pages import dumps

UNFINISHED_STATES = frozenset({"pending", "downloading", "verifying"})


class Catalog(StoreBase):
    # -- commands --------------------------------------------------------------------------
    def add_command(
        self, command_id: str, device: str, name: str, args: dict[str, Any], created: float
    ) -> None:
        with self.transaction() as db:
            if not db.query("SELECT 1 AS x FROM devices WHERE id = ?", [device]):
                raise NotFound(f"no device {device!r}: it has never sent anything to the cloud")
            db.execute(
                "INSERT INTO commands (id, device, name, args, created, state) VALUES (?, ?, ?, ?, ?, ?)",
                [command_id, device, name, dumps(args, "command args"), created, "pending"],
            )

    def mark_command(self, command_id: str, state: str, error: str | None = None) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE commands SET state = ?, error = ? WHERE id = ? AND state != 'replied'",
                [state, error, command_id],
            )

    def command(self, command_id: str) -> dict[str, Any]:
        """A command and its reply, read in one statement: one snapshot, so a reply stored
        between two reads can never show beside the state it replaced."""
        rows = self._query(
            "SELECT c.*, r.command_id AS reply_for, r.ok AS reply_ok, r.result AS reply_result, "
            "r.error AS reply_error, r.ts AS reply_ts, r.received AS reply_received, "
            "r.time_flag AS reply_time_flag, r.device_ts AS reply_device_ts "
            "FROM commands c LEFT JOIN command_replies r ON r.command_id = c.id WHERE c.id = ?",
            [command_id],
        )
        if not rows:
            raise NotFound(f"no command {command_id!r}")
        row = rows[0]
        fields = ("ok", "result", "error", "ts", "received", "time_flag", "device_ts")
        reply = {f: row.pop(f"reply_{f}") for f in fields}
        if row.pop("reply_for") is None:
            return row | {"reply": None}
        reply["ok"] = bool(reply["ok"])
        if isinstance(reply["result"], str):
            reply["result"] = json.loads(reply["result"])
        return row | {"reply": reply}

    def commands(self, device: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        if device is None:
            return self._query("SELECT * FROM commands ORDER BY created DESC LIMIT ?", [limit])
        return self._query(
            "SELECT * FROM commands WHERE device = ? ORDER BY created DESC LIMIT ?", [device, limit]
        )

    # -- models and deployments (filled by the signed-update tooling) ---------------------
    def add_model_version(
        self,
        model: str,
        version: str,
        manifest: dict[str, Any],
        *,
        sha256: str,
        created: float,
        artifact_url: str | None = None,
        signature: str | None = None,
        key_id: str | None = None,
        description: str | None = None,
    ) -> None:
        manifest_text = dumps(manifest, "manifest")
        with self.transaction() as db:
            db.execute(
                "INSERT INTO models (name, description, created) VALUES (?, ?, ?) ON CONFLICT (name) "
                "DO UPDATE SET description = coalesce(excluded.description, models.description)",
                [model, description, created],
            )
            db.execute(
                "INSERT INTO model_versions (model, version, manifest, sha256, artifact_url, signature, "
                "key_id, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (model, version) DO UPDATE "
                "SET manifest = excluded.manifest, sha256 = excluded.sha256, "
                "artifact_url = excluded.artifact_url, signature = excluded.signature, "
                "key_id = excluded.key_id, created = excluded.created",
                [model, version, manifest_text, sha256, artifact_url, signature, key_id, created],
            )

    def models(self) -> list[dict[str, Any]]:
        return self._query(
            "SELECT m.name, m.description, m.created, count(v.version) AS versions "
            "FROM models m LEFT JOIN model_versions v ON v.model = m.name "
            "GROUP BY m.name, m.description, m.created ORDER BY m.name"
        )

    def model(self, name: str) -> dict[str, Any]:
        with self.snapshot():
            rows = self._query("SELECT * FROM models WHERE name = ?", [name])
            if not rows:
                raise NotFound(f"no model {name!r}")
            versions = self._query(
                "SELECT * FROM model_versions WHERE model = ? ORDER BY created DESC", [name]
            )
            return rows[0] | {"versions": versions}

    def model_version(self, model: str, version: str) -> dict[str, Any]:
        rows = self._query("SELECT * FROM model_versions WHERE model = ? AND version = ?", [model, version])
        if not rows:
            raise NotFound(f"no model version {model!r} {version!r}: publish it first")
        return rows[0]

    def active_versions(self, device: str, model: str, limit: int = 1000) -> list[str]:
        """The versions of ``model`` that ``device`` ran, newest first: from its status messages (the
        models it announced) and the deployments it reported ``active`` or ``rolled_back``."""
        with self.snapshot():
            seen: dict[str, float] = {}
            for r in self._query(
                "SELECT models, received FROM status_history WHERE device = ? ORDER BY received DESC LIMIT ?",
                [device, limit],
            ):
                version = (r["models"] or {}).get(model) if isinstance(r["models"], dict) else None
                if version is not None:
                    seen[str(version)] = max(seen.get(str(version), 0.0), float(r["received"]))
            for r in self._query(
                "SELECT version, MAX(received) AS last FROM deployment_devices "
                "WHERE device = ? AND model = ? AND state IN ('active', 'rolled_back') GROUP BY version",
                [device, model],
            ):
                seen[str(r["version"])] = max(seen.get(str(r["version"]), 0.0), float(r["last"]))
            return sorted(seen, key=lambda v: seen[v], reverse=True)

    def create_deployment(
        self,
        deployment_id: str,
        models: list[dict[str, str]],
        devices: list[str],
        created: float,
        note: str | None = None,
    ) -> None:
        with self.transaction() as db:
            for m in models:
                if not db.query(
                    "SELECT 1 AS x FROM model_versions WHERE model = ? AND version = ?",
                    [m.get("model"), m.get("version")],
                ):
                    raise NotFound(f"no model version {m.get('model')!r} {m.get('version')!r}")
            db.execute(
                "INSERT INTO deployments (id, created, models, devices, state, note) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    deployment_id,
                    created,
                    dumps(models, "deployment models"),
                    dumps(devices, "deployment devices"),
                    "active",
                    note,
                ],
            )

    def deployments(self, limit: int = 100) -> list[dict[str, Any]]:
        return self._query("SELECT * FROM deployments ORDER BY created DESC LIMIT ?", [limit])

    def deployment(self, deployment_id: str) -> dict[str, Any]:
        with self.snapshot():
            rows = self._query("SELECT * FROM deployments WHERE id = ?", [deployment_id])
            devices = self._query(
                "SELECT device, model, version, state, reason, progress, ts, received, time_flag, device_ts "
                "FROM deployment_devices WHERE deployment = ? ORDER BY device",
                [deployment_id],
            )
            if not rows and not devices:
                raise NotFound(f"no deployment {deployment_id!r}")
            base = rows[0] if rows else {"id": deployment_id, "state": "unknown"}
            return base | {"device_states": devices}

    def deployment_status(self, deployment_id: str) -> dict[str, Any]:
        """A deployment with one entry per device: its last reported state, or ``pending`` (nothing
        reported yet) or ``superseded`` (unfinished here, and a newer deployment targets the device)."""
        with self.snapshot():
            rows = self._query("SELECT * FROM deployments WHERE id = ?", [deployment_id])
            if not rows:
                raise NotFound(f"no deployment {deployment_id!r}")
            dep = rows[0]
            reported = {
                r["device"]: r
                for r in self._query(
                    "SELECT device, model, version, state, reason, progress, received "
                    "FROM deployment_devices WHERE deployment = ?",
                    [deployment_id],
                )
            }
            newer: dict[str, str] = {}
            later = "SELECT id, devices FROM deployments WHERE created > ? ORDER BY created"
            with self.reading() as db:  # the raw JSON text: both backends parse it here alike
                for later_id, later_devices in db.execute(later, [dep["created"]]).fetchall():
                    for device in json.loads(later_devices):
                        newer[device] = later_id
            first = dep["models"][0] if dep["models"] else {}
            devices = []
            for device in sorted(set(dep["devices"]) | set(reported)):
                row = reported.get(device)
                state, reason = (row["state"], row["reason"]) if row else ("pending", None)
                if state in UNFINISHED_STATES and device in newer:
                    state, reason = "superseded", f"deployment {newer[device]} replaced this one"
                devices.append(
                    {
                        "device": device,
                        "state": state,
                        "version": row["version"] if row else first.get("version"),
                        "progress": row["progress"] if row else None,
                        "reason": reason,
                        "updated": row["received"] if row else None,
                    }
                )
            summary: dict[str, int] = {}
            for d in devices:
                summary[d["state"]] = summary.get(d["state"], 0) + 1
            return {
                "id": dep["id"],
                "model": first.get("model"),
                "version": first.get("version"),
                "models": dep["models"],
                "created": dep["created"],
                "note": dep["note"],
                "devices": devices,
                "summary": summary,
            }
