"""Names and defaults shared by every command: topics, groups, registry, ports.

Each value can be overridden by a CLI flag or a ``DRIFTLINE_<NAME>`` environment variable
(see ``driftline.cli``); this module only holds the defaults, so that the simulator, the
worker, the demo and the tests agree on them without importing each other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
INPUT_TOPIC = "customer-events"
OUTPUT_TOPIC = "predictions"
DEAD_LETTER_TOPIC = "customer-events-dlq"
CONSUMER_GROUP = "driftline-scoring"
DEFAULT_PARTITIONS = 4
DEFAULT_REGISTRY = "var/models"
DEFAULT_MODEL_NAME = "churn"
DEFAULT_METRICS_PORT = 9300


def env(name: str, default: str | None = None) -> str | None:
    """Read ``DRIFTLINE_<NAME>``."""
    return os.environ.get(f"DRIFTLINE_{name.upper()}", default)


@dataclass(frozen=True, slots=True)
class TopicNames:
    input: str = INPUT_TOPIC
    output: str = OUTPUT_TOPIC
    dead_letter: str = DEAD_LETTER_TOPIC
