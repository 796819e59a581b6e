"""Objects every role builds from the validated configuration, built one way."""

from __future__ import annotations

from edge_agent.config import AgentConfig
from edge_agent.runtime.backends import BackendOptions
from edge_agent.runtime.engine import Engine, EngineOptions
from edge_agent.runtime.store import ModelStore
from edge_agent.storage import OutboxBound, Storage


def open_storage(config: AgentConfig) -> Storage:
    """The device database, with the free-space levels of ``[storage]`` and the outbox bound."""
    return Storage.in_dir(
        config.data_dir,
        floor_bytes=config.storage.floor_bytes,
        reserve_bytes=config.storage.reserve_bytes,
        outbox=OutboxBound(config.sync.outbox_max_rows, config.sync.on_full),
    )


def build_store(config: AgentConfig) -> ModelStore:
    return ModelStore(config.model_dir, config.store_state_path)


def build_engine(config: AgentConfig) -> Engine:
    return Engine(
        build_store(config),
        EngineOptions(
            backend=BackendOptions(config.intra_op_threads, config.inter_op_threads),
            max_image_pixels=config.max_image_pixels,
            max_rows=config.max_batch_rows,
        ),
    )
