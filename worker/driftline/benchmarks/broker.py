"""The broker a benchmark run uses: a given cluster, or a local one started for the run.

Apache Kafka where Java 17+ is (``auto``), else the embedded Tansu broker, saying why; the
report names the broker that ran, since the figures depend on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


def resolve_broker_kind(kind: str, say: Callable[[str], None] | None = None) -> str:
    """ "auto" -> "kafka" when Java 17+ is there, else "tansu" (saying why); others as given."""
    if kind != "auto":
        return kind
    from driftline.broker import BrokerError
    from driftline.kafka_broker import java_executable

    try:
        java_executable()
    except BrokerError as error:
        if say is not None:
            say(f"benchmarks on Tansu, not Apache Kafka: {error}")
        return "tansu"
    return "kafka"


@contextmanager
def bench_broker(bootstrap: str | None, kind: str = "auto") -> Iterator[tuple[str, str]]:
    """``(bootstrap servers, which broker)``: the given cluster, or a local broker of
    ``kind`` started for the run (Apache Kafka by default, where Java is)."""
    if bootstrap:
        yield bootstrap, f"existing cluster at {bootstrap}"
        return
    import sys

    from driftline.broker import make_broker

    resolved = resolve_broker_kind(kind, lambda line: print(line, file=sys.stderr))
    with make_broker(resolved) as broker:
        yield broker.bootstrap, f"{broker.kind} (local, started for the run)"
