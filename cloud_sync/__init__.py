"""cloud_sync: the cloud end of the fleet link.

Roles, each runnable on its own (``python -m cloud_sync.cli <role>``):

- ``ingest``: MQTT -> SQLite. Subscribes to every device's device->cloud topics,
  decodes with :mod:`edge_agent.sync.protocol`, stores idempotently and
  acknowledges stored results back to the device. Several ingest processes
  share the load through MQTT 5 shared subscriptions.
- ``api``: a small HTTP API over the same database (devices, results,
  telemetry, commands and their replies, models, deployments).

:mod:`cloud_sync.store` is the only owner of the database schema and
:mod:`cloud_sync.mqtt` the only module that imports paho.
"""

__version__ = "0.1.0"
