CREATE TABLE "devices" (
   "id" TEXT PRIMARY KEY,
   "first_seen" REAL NOT NULL,
   "last_seen" REAL NOT NULL,
   "online" INTEGER,
   "state" TEXT,
   "agent_version" TEXT,
   "models" TEXT,
   "status_ts" REAL,
   "state_received" REAL,
   "reported_models" TEXT,
   "last_update" TEXT,
   "reported_ts" REAL
);
CREATE TABLE "status_history" (
   "id" INTEGER PRIMARY KEY,
   "device" TEXT NOT NULL REFERENCES "devices"("id"),
   "state" TEXT NOT NULL,
   "agent_version" TEXT,
   "models" TEXT,
   "ts" REAL NOT NULL,
   "received" REAL NOT NULL
);
CREATE UNIQUE INDEX "idx_status_history_device_ts_state"
    ON "status_history" ("device", "ts", "state");
CREATE TABLE "telemetry" (
   "device" TEXT REFERENCES "devices"("id"),
   "ts" REAL,
   "received" REAL NOT NULL,
   "metrics" TEXT NOT NULL,
   PRIMARY KEY ("device", "ts")
);
CREATE TABLE "results" (
   "id" TEXT PRIMARY KEY,
   "device" TEXT NOT NULL REFERENCES "devices"("id"),
   "batch" TEXT NOT NULL,
   "source" TEXT NOT NULL,
   "ref" TEXT,
   "model" TEXT NOT NULL,
   "version" TEXT NOT NULL,
   "label" TEXT,
   "created" REAL NOT NULL,
   "received" REAL NOT NULL,
   "ingest" TEXT,
   "body" TEXT NOT NULL
);
CREATE INDEX "idx_results_created_id"
    ON "results" ("created", "id");
CREATE INDEX "idx_results_device_created"
    ON "results" ("device", "created");
CREATE INDEX "idx_results_model_created"
    ON "results" ("model", "created");
CREATE INDEX "idx_results_label_created"
    ON "results" ("label", "created");
CREATE TABLE "commands" (
   "id" TEXT PRIMARY KEY,
   "device" TEXT NOT NULL REFERENCES "devices"("id"),
   "name" TEXT NOT NULL,
   "args" TEXT NOT NULL,
   "created" REAL NOT NULL,
   "state" TEXT NOT NULL,
   "error" TEXT
);
CREATE INDEX "idx_commands_device_created"
    ON "commands" ("device", "created");
CREATE TABLE "command_replies" (
   "command_id" TEXT PRIMARY KEY REFERENCES "commands"("id"),
   "device" TEXT NOT NULL,
   "ok" INTEGER NOT NULL,
   "result" TEXT,
   "error" TEXT,
   "ts" REAL NOT NULL,
   "received" REAL NOT NULL
);
CREATE TABLE "models" (
   "name" TEXT PRIMARY KEY,
   "description" TEXT,
   "created" REAL
);
CREATE TABLE "model_versions" (
   "model" TEXT REFERENCES "models"("name"),
   "version" TEXT,
   "manifest" TEXT NOT NULL,
   "sha256" TEXT NOT NULL,
   "artifact_url" TEXT,
   "signature" TEXT,
   "key_id" TEXT,
   "created" REAL NOT NULL,
   PRIMARY KEY ("model", "version")
);
CREATE TABLE "deployments" (
   "id" TEXT PRIMARY KEY,
   "created" REAL NOT NULL,
   "models" TEXT NOT NULL,
   "devices" TEXT NOT NULL,
   "state" TEXT NOT NULL,
   "note" TEXT
);
CREATE TABLE "deployment_devices" (
   "deployment" TEXT,
   "device" TEXT REFERENCES "devices"("id"),
   "model" TEXT,
   "version" TEXT,
   "state" TEXT NOT NULL,
   "reason" TEXT,
   "progress" REAL,
   "ts" REAL NOT NULL,
   "received" REAL NOT NULL,
   PRIMARY KEY ("deployment", "device")
);
