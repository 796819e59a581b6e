"""The cloud schema and its one migration history, for SQLite and PostgreSQL alike.

Each step is SQL written once; ``{text}``, ``{real}``, ``{int}`` and ``{serial_pk}`` are the
column types of the dialect (``backends.DIALECTS``). Step ``i`` moves the schema from version
``i`` to ``i + 1``; append only. The version is SQLite's ``PRAGMA user_version`` or, on
PostgreSQL, the one row of ``schema_version`` (:class:`PgVersion`); the runner is
``edge_agent.sqlitefile.migrate`` for both. A PostgreSQL migration holds an advisory lock, so
several processes starting together migrate once.

Version 1 is the schema sqlite-utils wrote before (same tables, columns, keys and indexes),
so an existing SQLite file at version 1 is left as it is.
"""

from __future__ import annotations

from collections.abc import Callable

from cloud_sync.store.backends import DIALECTS, Conn

MIGRATION_LOCK = 0x636C6F7564  # pg_advisory_xact_lock key: "cloud"

V1 = """
CREATE TABLE devices (
    id {text} PRIMARY KEY,
    first_seen {real} NOT NULL,
    last_seen {real} NOT NULL,
    online {int},
    state {text},
    agent_version {text},
    models {text},
    status_ts {real},
    state_received {real},
    reported_models {text},
    last_update {text},
    reported_ts {real}
);
CREATE TABLE status_history (
    id {serial_pk},
    device {text} NOT NULL REFERENCES devices(id),
    state {text} NOT NULL,
    agent_version {text},
    models {text},
    ts {real} NOT NULL,
    received {real} NOT NULL
);
CREATE UNIQUE INDEX idx_status_history_device_ts_state ON status_history (device, ts, state);
CREATE TABLE telemetry (
    device {text} NOT NULL REFERENCES devices(id),
    ts {real} NOT NULL,
    received {real} NOT NULL,
    metrics {text} NOT NULL,
    PRIMARY KEY (device, ts)
);
CREATE TABLE results (
    id {text} PRIMARY KEY,
    device {text} NOT NULL REFERENCES devices(id),
    batch {text} NOT NULL,
    source {text} NOT NULL,
    ref {text},
    model {text} NOT NULL,
    version {text} NOT NULL,
    label {text},
    created {real} NOT NULL,
    received {real} NOT NULL,
    ingest {text},
    body {text} NOT NULL
);
CREATE INDEX idx_results_created_id ON results (created, id);
CREATE INDEX idx_results_device_created ON results (device, created);
CREATE INDEX idx_results_model_created ON results (model, created);
CREATE INDEX idx_results_label_created ON results (label, created);
CREATE TABLE commands (
    id {text} PRIMARY KEY,
    device {text} NOT NULL REFERENCES devices(id),
    name {text} NOT NULL,
    args {text} NOT NULL,
    created {real} NOT NULL,
    state {text} NOT NULL,
    error {text}
);
CREATE INDEX idx_commands_device_created ON commands (device, created);
CREATE TABLE command_replies (
    command_id {text} PRIMARY KEY REFERENCES commands(id),
    device {text} NOT NULL,
    ok {int} NOT NULL,
    result {text},
    error {text},
    ts {real} NOT NULL,
    received {real} NOT NULL
);
CREATE TABLE models (
    name {text} PRIMARY KEY,
    description {text},
    created {real}
);
CREATE TABLE model_versions (
    model {text} NOT NULL REFERENCES models(name),
    version {text} NOT NULL,
    manifest {text} NOT NULL,
    sha256 {text} NOT NULL,
    artifact_url {text},
    signature {text},
    key_id {text},
    created {real} NOT NULL,
    PRIMARY KEY (model, version)
);
CREATE TABLE deployments (
    id {text} PRIMARY KEY,
    created {real} NOT NULL,
    models {text} NOT NULL,
    devices {text} NOT NULL,
    state {text} NOT NULL,
    note {text}
);
CREATE TABLE deployment_devices (
    deployment {text} NOT NULL,
    device {text} NOT NULL REFERENCES devices(id),
    model {text},
    version {text},
    state {text} NOT NULL,
    reason {text},
    progress {real},
    ts {real} NOT NULL,
    received {real} NOT NULL,
    PRIMARY KEY (deployment, device)
)
"""

# Version 2 (issue 12): what the fleet page and the device filters read at fleet size.
# devices(online, id): the online/offline filter pages in id order; devices(last_seen)
# finds what changed since a live update; telemetry's newest row per device comes from
# its primary key (device, ts); deployment_devices(received) the newest report.
V2 = """
CREATE INDEX idx_devices_online_id ON devices (online, id);
CREATE INDEX idx_devices_last_seen ON devices (last_seen);
CREATE INDEX idx_deployment_devices_received ON deployment_devices (received);
CREATE INDEX idx_deployment_devices_device ON deployment_devices (device)
"""


def sql_step(script: str) -> Callable[[Conn], None]:
    """A migration step: ``;``-separated statements with the dialect's column types filled in."""

    def step(conn: Conn) -> None:
        types = DIALECTS[conn.dialect]
        for statement in script.format(**types).split(";"):
            if statement.strip():
                conn.execute(statement)

    return step


# Version 3 (issue 10): on-device benchmark figures, the latest per (device, model) as reported.
V3 = """
CREATE TABLE model_bench (
    device {text} NOT NULL REFERENCES devices(id),
    model {text} NOT NULL,
    version {text} NOT NULL,
    ts {real} NOT NULL,
    received {real} NOT NULL,
    figures {text} NOT NULL,
    PRIMARY KEY (device, model)
)
"""

# Version 4 (issue 13): dashboard sessions ended by a logout before they expire
# (cloud_sync/dashboard/auth.py).
V4 = """
CREATE TABLE revoked_sessions (
    nonce {text} PRIMARY KEY,
    expires {real} NOT NULL
)
"""

# Version 5 (issue 14): device clocks. A Pi without a real-time clock may stamp results with
# 1970 (or any time) until NTP answers. ``time_flag`` says how far ``created`` can be believed,
# ``device_created`` keeps what the device said when it was not stored as ``created``, ``seq``
# is the device's result sequence (their order, whatever the clock).
V5 = """
ALTER TABLE results ADD COLUMN time_flag {text};
ALTER TABLE results ADD COLUMN device_created {real};
ALTER TABLE results ADD COLUMN seq {int}
"""

# Version 6 (issue 11): counters of signed update metadata ("targets:<device>": metadata
# version, "release:<model>"), the shadow figures a device last reported (model -> ShadowReport),
# its rollout group (Status.group: waves by group), and staged rollouts (cloud_sync.rollout):
# the plan and its progress as one JSON document.
V6 = """
CREATE TABLE counters (
    name {text} PRIMARY KEY,
    value {int} NOT NULL
);
ALTER TABLE devices ADD COLUMN shadow {text};
ALTER TABLE devices ADD COLUMN rollout_group {text};
CREATE TABLE rollouts (
    id {text} PRIMARY KEY,
    created {real} NOT NULL,
    updated {real} NOT NULL,
    state {text} NOT NULL,
    doc {text} NOT NULL
)
"""

# Version 7 (issue 14): clock corrections. A result recorded before the device's clock was
# synchronised carries its boot and seconds since that boot (``boot``, ``boot_s``); the device's
# ``ClockCorrection`` (kept in ``clock_corrections``, once per device and id) gives the boot's
# start time, and each unsynced result of that boot and seq range gets ``created = boot_time +
# boot_s``, ``time_flag = 'corrected'`` and ``time_corrected`` (when the cloud corrected it),
# ``device_created`` kept. The partial index holds the unsynced results only (few).
V7 = """
ALTER TABLE results ADD COLUMN boot {text};
ALTER TABLE results ADD COLUMN boot_s {real};
ALTER TABLE results ADD COLUMN time_corrected {real};
CREATE INDEX idx_results_unsynced ON results (device, boot, seq) WHERE time_flag = 'unsynced';
CREATE TABLE clock_corrections (
    device {text} NOT NULL REFERENCES devices(id),
    id {text} NOT NULL,
    boot {text} NOT NULL,
    first_seq {int} NOT NULL,
    last_seq {int} NOT NULL,
    count {int} NOT NULL,
    boot_time {real} NOT NULL,
    ts {real} NOT NULL,
    received {real} NOT NULL,
    PRIMARY KEY (device, id)
);
CREATE INDEX idx_clock_corrections_boot ON clock_corrections (device, boot)
"""

# Version 8 (issue 14): every report a device stamps with its own clock follows the rule of
# results (``clocks.device_time``): a Pi rebooted into 1970 (or with a clock years ahead) has its
# status, telemetry, command replies, benchmark figures and update outcomes stored at their
# arrival time, ``time_flag = 'implausible'``, the device's own time kept in ``device_ts``. A
# retained status seen again keeps one history row: unique on the device's own time as well.
V8 = """
ALTER TABLE telemetry ADD COLUMN time_flag {text};
ALTER TABLE telemetry ADD COLUMN device_ts {real};
ALTER TABLE status_history ADD COLUMN time_flag {text};
ALTER TABLE status_history ADD COLUMN device_ts {real};
CREATE UNIQUE INDEX idx_status_history_device_ts_kept ON status_history (device, device_ts, state)
    WHERE device_ts IS NOT NULL;
ALTER TABLE command_replies ADD COLUMN time_flag {text};
ALTER TABLE command_replies ADD COLUMN device_ts {real};
ALTER TABLE model_bench ADD COLUMN time_flag {text};
ALTER TABLE model_bench ADD COLUMN device_ts {real};
ALTER TABLE deployment_devices ADD COLUMN time_flag {text};
ALTER TABLE deployment_devices ADD COLUMN device_ts {real}
"""

MIGRATIONS: tuple[Callable[[Conn], None], ...] = tuple(sql_step(v) for v in (V1, V2, V3, V4, V5, V6, V7, V8))


class PgVersion:
    """The schema version in a one-row table (PostgreSQL has no user_version)."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        conn.execute("SELECT pg_advisory_xact_lock(?)", [MIGRATION_LOCK])
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")

    def read(self) -> int:
        return self.read_only(self.conn)

    @staticmethod
    def read_only(conn: Conn) -> int:
        """The version without taking the migration lock (0 before the first migration)."""
        if conn.execute("SELECT to_regclass('schema_version')").fetchone()[0] is None:
            return 0
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        return 0 if row is None else int(row[0])

    def write(self, version: int) -> None:
        self.conn.execute("DELETE FROM schema_version")
        self.conn.execute("INSERT INTO schema_version (version) VALUES (?)", [version])


class SqliteVersion:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    def read(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def write(self, version: int) -> None:
        self.conn.execute(f"PRAGMA user_version={int(version)}")
