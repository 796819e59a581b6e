"""The clustered-broker configuration (firmware_images/emqx/) keeps the fleet-link contract:
the same per-client ACL model as mosquitto's, the cloud's shared-subscription group, MQTT 5
features the cloud relies on. EMQX itself is not run here (no Debian package): these checks read
the files against the code's own constants."""

from __future__ import annotations

import re
from pathlib import Path

from cloud_sync.config import CloudConfig
from edge_agent.sync import protocol

EMQX = Path(__file__).resolve().parents[2] / "firmware_images" / "emqx"


def rules() -> list[str]:
    text = "\n".join(line.split("%%", 1)[0] for line in (EMQX / "acl.conf").read_text().splitlines())
    return [r.strip() for r in text.split(".\n") if r.strip()]


def test_the_acl_gives_a_device_its_own_prefix_and_nothing_else() -> None:
    found = rules()
    assert found[-1].rstrip(".") == "{deny, all}"  # anything not granted is refused
    device_rules = [r for r in found if "{allow, all," in r]
    assert device_rules == [f'{{allow, all, all, ["{protocol.PREFIX}/${{username}}/#"]}}']
    assert all("{allow, all}" not in r for r in found)


def test_the_cloud_account_gets_the_tree_and_its_shared_group() -> None:
    group = CloudConfig.model_fields["ingest_group"].default
    text = (EMQX / "acl.conf").read_text()
    assert f'"$share/{group}/{protocol.PREFIX}/#"' in text
    assert f'{{allow, {{username, "cloud"}}, all, ["{protocol.PREFIX}/#"]}}.' in text


def test_the_broker_config_has_what_the_contract_needs() -> None:
    conf = (EMQX / "emqx.conf").read_text()
    assert re.search(r"shared_subscription\s*=\s*true", conf)
    assert re.search(r"retain_available\s*=\s*true", conf)
    assert re.search(r"no_match\s*=\s*deny", conf)
    size = re.search(r"max_packet_size\s*=\s*(\d+)KB", conf)
    assert size is not None and int(size.group(1)) * 1024 > protocol.MAX_PAYLOAD_BYTES
