"""Settings from a TOML file plus ``<PREFIX>*`` environment variables: the loader both ends use.

``edge_agent.config`` (``EDGE_*``) and ``cloud_sync.config`` (``CLOUD_*``) describe their
variables with an ``EnvLayout`` and get back the raw values and every problem found so far;
they validate with their pydantic model and add ``describe(exc)``, so an operator sees every
problem at once, in one round trip:

- a file that cannot be read or is not TOML;
- a misspelt variable: ``unknown environment variable EDGE_BATCH__CORN; did you mean
  EDGE_BATCH__CRON?``. A variable close to no setting is an error on the device (its
  environment is its own) and, with ``foreign_ok``, ignored with a warning in the cloud,
  where images carry other tools' ``CLOUD_*`` variables (the Google Cloud SDK's);
- a JSON field whose value is not JSON.

An empty value means "none" (``EDGE_BATCH__INTERVAL_S=`` turns the interval off).
Precedence: defaults < file < environment. Validation error messages never echo a secret.
"""

from __future__ import annotations

import difflib
import json
import logging
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EnvLayout:
    prefix: str  # "EDGE_"
    config_file_var: str  # "EDGE_CONFIG": the TOML file, when no path is given
    variables: Mapping[str, tuple[str, ...]]  # "EDGE_BATCH__CRON" -> ("batch", "cron")
    json_fields: frozenset[str] = field(default_factory=frozenset)  # by field name, at any depth
    foreign_ok: bool = False  # an unknown variable close to no setting is another tool's


def read_sources(
    layout: EnvLayout, path: Path | None, env: Mapping[str, str]
) -> tuple[dict[str, Any], list[str]]:
    """(raw values: file, then environment on top; problems found reading them)."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    path = path or (Path(env[layout.config_file_var]) if env.get(layout.config_file_var) else None)
    if path is not None:
        try:
            values.update(tomllib.loads(path.read_text()))
        except OSError as exc:
            problems.append(f"config file {path}: {exc.strerror}")
        except tomllib.TOMLDecodeError as exc:
            problems.append(f"config file {path}: not valid TOML: {exc}")
    for key, raw in sorted(env.items()):
        if not key.startswith(layout.prefix) or key == layout.config_file_var:
            continue
        where = layout.variables.get(key)
        if where is None:
            problem = _unknown(layout, key)
            if problem:
                problems.append(problem)
            continue
        target = values
        for section in where[:-1]:
            target = target.setdefault(section, {})
            if not isinstance(target, dict):
                problems.append(f"{key}: section {section} is not a table")
                break
        else:
            name = where[-1]
            if raw == "":
                target[name] = None
            elif name in layout.json_fields:
                try:
                    target[name] = json.loads(raw)
                except ValueError as exc:
                    problems.append(f"{key}: not valid JSON: {exc}")
            else:
                target[name] = raw
    return values, problems


def _unknown(layout: EnvLayout, key: str) -> str | None:
    close = difflib.get_close_matches(key, list(layout.variables), n=1, cutoff=0.8)
    if close:
        return f"unknown environment variable {key}; did you mean {close[0]}?"
    if layout.foreign_ok:  # another tool's variable (CLOUD_SDK_VERSION of the Google Cloud SDK images...)
        logger.warning("ignoring environment variable %s: not a setting of this program", key)
        return None
    return f"unknown environment variable {key}; known: {', '.join(sorted(layout.variables))}"


def describe(exc: ValidationError, secret_fields: Collection[str] = ()) -> list[str]:
    """One line per validation error: the field, the reason and the value (never a secret's)."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        if not where:  # a model validator: already a sentence per problem
            problems.extend(msg.split("; "))
        elif where in secret_fields or where.rsplit(".", 1)[-1] in secret_fields:
            problems.append(f"{where}: {msg}")
        else:
            problems.append(f"{where}: {msg} (got {err.get('input')!r})")
    return problems
