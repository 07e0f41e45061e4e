"""Flags and the start-up check shared by every command that talks to an existing cluster.

``--kafka-config FILE`` (any librdkafka property: SASL, TLS ...; see
:mod:`driftline.engine.kafka.client_config`) and ``--broker-timeout``.  :func:`connect`
loads the property file and waits for one metadata answer, so that a missing or
unreachable broker is one line on stderr and exit status 2, not a retry loop of
librdkafka log lines followed by a traceback.
"""

from __future__ import annotations

import argparse
import logging

from confluent_kafka import KafkaException

from driftline.commands._errors import CommandError
from driftline.engine.kafka.admin import BrokerUnavailable, wait_for_broker
from driftline.engine.kafka.client_config import (
    KafkaConfigError,
    masked,
    use_config_file,
    user_properties,
)

log = logging.getLogger(__name__)

DEFAULT_BROKER_TIMEOUT_S = 30.0


def add_kafka_client(parser: argparse.ArgumentParser) -> None:
    """``--kafka-config`` and ``--broker-timeout``."""
    parser.add_argument(
        "--kafka-config",
        default=None,
        metavar="FILE",
        help="librdkafka properties (key=value lines, # comments) for every Kafka client, "
        "e.g. security.protocol=SASL_SSL; DRIFTLINE_KAFKA_<PROPERTY> variables override it "
        "(DRIFTLINE_KAFKA_SASL_USERNAME -> sasl.username)",
    )
    parser.add_argument(
        "--broker-timeout",
        type=float,
        default=DEFAULT_BROKER_TIMEOUT_S,
        metavar="SECONDS",
        help="give up (exit 2) when no broker answers within this time (default: %(default)g)",
    )


def load_client_properties(args: argparse.Namespace) -> None:
    """Read ``--kafka-config`` for every client this process creates."""
    try:
        use_config_file(getattr(args, "kafka_config", None))
    except KafkaConfigError as error:
        raise CommandError(str(error)) from error
    if properties := user_properties():
        log.debug("Kafka client properties (file, environment): %s", masked(properties))


def connect(args: argparse.Namespace, bootstrap: str | None = None) -> None:
    """Load the client properties, then wait for the cluster (``CommandError`` if none)."""
    load_client_properties(args)
    servers = bootstrap or args.bootstrap_servers
    timeout = float(getattr(args, "broker_timeout", DEFAULT_BROKER_TIMEOUT_S))
    try:
        wait_for_broker(servers, timeout=timeout)
    except BrokerUnavailable as error:
        raise CommandError(str(error)) from error
    except KafkaException as error:  # librdkafka refused a property (name or value)
        raise CommandError(f"Kafka client configuration: {_reason(error)}") from error


def _reason(error: KafkaException) -> str:
    """librdkafka's own sentence, without the ``KafkaError{code=...}`` wrapper."""
    first = error.args[0] if error.args else error
    return first.str() if hasattr(first, "str") else str(first)
