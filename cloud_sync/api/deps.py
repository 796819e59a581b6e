"""What every route module of the cloud API shares: the ``Cloud`` state and its dependency, row types."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Query, Request

from cloud_sync import rollout
from cloud_sync.artifacts import artifact_dir
from cloud_sync.config import CloudConfig
from cloud_sync.mqtt import MqttLink
from cloud_sync.store import Store
from cloud_sync.trust import Signer

Row = dict[str, Any]
Filter = Annotated[str | None, Query(min_length=1, max_length=200)]


class Cloud:
    """What the endpoints share: settings, the store, the MQTT link, the artifact directory."""

    def __init__(self, config: CloudConfig, store: Store, link: MqttLink) -> None:
        self.config, self.store, self.link = config, store, link
        self.artifacts = artifact_dir(config)
        self.rollouts = rollout.Rollouts(store, link, lambda: Signer.from_config(config))


def _cloud(request: Request) -> Cloud:
    cloud: Cloud = request.app.state.cloud
    return cloud


CloudDep = Annotated[Cloud, Depends(_cloud)]
