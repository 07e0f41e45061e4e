"""Kafka client properties supplied by the user: SASL, TLS, timeouts, anything librdkafka takes.

Clusters in production usually need properties Driftline cannot guess
(``security.protocol=SASL_SSL``, ``sasl.mechanism``, ``sasl.username`` ...).  They come
from two places, and reach every producer, consumer and admin client Driftline creates:

1. ``--kafka-config FILE`` (env ``DRIFTLINE_KAFKA_CONFIG``): a librdkafka / Java
   properties file, ``key=value`` (or ``key: value``) per line, ``#`` and ``!`` comments;
2. ``DRIFTLINE_KAFKA_<PROPERTY>`` environment variables: the rest of the name lower-cased,
   underscores become dots (``DRIFTLINE_KAFKA_SASL_USERNAME`` -> ``sasl.username``).

Precedence, lowest first: the file, the environment, then what Driftline itself sets for a
client (``bootstrap.servers`` from ``--bootstrap-servers``, ``group.id``,
``transactional.id``, ``isolation.level``, ``enable.idempotence`` ...): those are part
of Driftline's delivery guarantees, so a property file cannot weaken them by accident.

Secrets are never logged: :func:`masked` replaces every value whose name says it is one
(``sasl.password``, ``ssl.key.password``, ``*.secret``, ...) before a config is shown.

librdkafka's own log lines go to the ``driftline.kafka`` logger (see :data:`KAFKA_LOGGER`),
which the CLI shows only at ``--log-level debug``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "CONFIG_FILE_ENV",
    "ENV_PREFIX",
    "KAFKA_LOGGER",
    "KafkaConfigError",
    "env_properties",
    "kafka_client_config",
    "load_properties",
    "masked",
    "use_config_file",
    "user_properties",
]

#: Where librdkafka's own log lines go (the CLI shows them at --log-level debug only).
KAFKA_LOGGER = logging.getLogger("driftline.kafka")

ENV_PREFIX = "DRIFTLINE_KAFKA_"
#: The environment twin of ``--kafka-config``: names the file, is not a property itself.
CONFIG_FILE_ENV = "DRIFTLINE_KAFKA_CONFIG"

_MASK = "********"
#: Property names that hold a secret: exact names and name endings.
_SECRET = re.compile(
    r"(^|\.)(password|secret|passphrase)$"
    r"|^sasl\.oauthbearer\.(client\.secret|config)$"
    r"|^ssl\.(key\.pem|keystore\.password|key\.password|certificate\.pem)$"
    r"|^sasl\.jaas\.config$"
)

#: Properties read from the file named by :func:`use_config_file` (the CLI calls it).
_file_properties: dict[str, str] = {}


class KafkaConfigError(ValueError):
    """A property file or variable that cannot be used (the CLI prints it on one line)."""


def load_properties(path: str | os.PathLike[str]) -> dict[str, str]:
    """Parse a librdkafka / Java properties file into ``{name: value}`` (strings).

    ``key=value``, ``key: value`` or ``key value``; blank lines and lines starting with
    ``#`` or ``!`` are skipped; whitespace around key and value is stripped; the last
    occurrence of a key wins (as in librdkafka's own ``-F`` files).
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise KafkaConfigError(f"Kafka config file {file}: {error.strerror or error}") from error
    except UnicodeDecodeError as error:
        raise KafkaConfigError(f"Kafka config file {file}: not UTF-8 text") from error
    properties: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        match = re.match(r"([^=:\s]+)\s*[=:\s]\s*(.*)$", line)
        if match is None:
            raise KafkaConfigError(f"Kafka config file {file} line {number}: no value for {line!r}")
        properties[match.group(1)] = match.group(2).strip()
    return properties


def env_properties(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``DRIFTLINE_KAFKA_<PROPERTY>`` variables as librdkafka properties.

    ``DRIFTLINE_KAFKA_SASL_USERNAME=alice`` gives ``{"sasl.username": "alice"}``.
    ``DRIFTLINE_KAFKA_CONFIG`` names the property file and is not a property.
    """
    environ = os.environ if environ is None else environ
    properties: dict[str, str] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_FILE_ENV:
            continue
        key = name[len(ENV_PREFIX) :].lower().replace("_", ".")
        if key:
            properties[key] = value
    return properties


def use_config_file(path: str | os.PathLike[str] | None) -> dict[str, str]:
    """Read ``path`` (None: none) as the property file for every client of this process."""
    global _file_properties
    _file_properties = {} if path is None or str(path) == "" else load_properties(path)
    return dict(_file_properties)


def user_properties(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The user's properties: the file's, overridden by the environment's."""
    return {**_file_properties, **env_properties(environ)}


def kafka_client_config(
    base: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The config for one client: the user's properties under Driftline's own ``base``.

    Every producer, consumer and admin client Driftline creates is built from this, so a
    SASL/TLS property given once reaches all of them.  librdkafka's log goes to
    :data:`KAFKA_LOGGER` unless ``base`` routes it elsewhere.
    """
    return {"logger": KAFKA_LOGGER, **user_properties(environ), **base}


def masked(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` safe to log: secret values replaced, callables by their name."""
    shown: dict[str, Any] = {}
    for key, value in config.items():
        if is_secret(key):
            shown[key] = _MASK
        elif callable(value) or isinstance(value, logging.Logger):
            shown[key] = f"<{type(value).__name__}>"
        else:
            shown[key] = value
    return shown


def is_secret(name: str) -> bool:
    """Whether the property ``name`` holds a secret (a password, key or token)."""
    return bool(_SECRET.search(name.lower()))
