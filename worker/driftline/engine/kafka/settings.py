"""A Kafka worker's settings: topics, batching, runtimes, guarantees and timeouts.

Plain data, read by every part of the engine (the loop, delivery, transactions, restore,
the drift sidecar); nothing here talks to a broker.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

from driftline import config
from driftline.core.clock_skew import DEFAULT_MAX_CLOCK_SKEW_MS, DEFAULT_MAX_REPLAY_JUMP_MS
from driftline.engine.kafka.dead_letters import PRODUCER_MAX_MESSAGE_BYTES
from driftline.observability.bearer import BearerToken


@dataclass
class WorkerSettings:
    """Everything a worker is told at start (``driftline worker`` flags map onto it)."""

    bootstrap_servers: str = config.DEFAULT_BOOTSTRAP
    input_topic: str = config.INPUT_TOPIC
    output_topic: str = config.OUTPUT_TOPIC
    dead_letter_topic: str = config.DEAD_LETTER_TOPIC
    group_id: str = config.CONSUMER_GROUP
    registry: str = config.DEFAULT_REGISTRY
    model_name: str = config.DEFAULT_MODEL_NAME
    model_version: str = "champion"
    #: Most records per micro-batch (the adaptive controller stays at or below it).
    batch_size: int = 2000
    #: Longest wait for a batch to fill (the controller waits less when caught up).
    poll_timeout_s: float = 0.05
    #: Adaptive micro-batching (``driftline.engine.batching``): grow the batch under a
    #: backlog, shrink it and the poll wait when caught up, to ``latency_target_s``.
    adaptive_batch: bool = True
    #: Floor of the adaptive size: below it, per-batch costs (a predict call is ~10 ms
    #: with scikit-learn) dominate and a burst needs many doublings to be absorbed.  It
    #: is only a cap: a caught-up worker's batches are what arrives within the wait.
    min_batch_size: int = 500
    latency_target_s: float = 0.05
    #: The consumers' ``fetch.wait.max.ms`` (input and changelog restore); None: a fifth
    #: of ``latency_target_s``, at most 50 ms (:func:`driftline.engine.kafka.clients.
    #: fetch_wait_ms`).  Longer only for a broker that answers a fetch with no records
    #: when reading it takes longer than this wait (Tansu, ``driftline.broker``).
    fetch_wait_max_ms: int | None = None
    #: Deliver and commit batch N on a second thread while batch N+1 is consumed and
    #: scored (at most one batch in flight; same ordering guarantees as sequential).
    pipelined: bool = True
    #: Score in a child process (``driftline.model.runtimes.process``): while it scores
    #: batch N the loop consumes, decodes and updates the state of batch N+1, so the
    #: model's time overlaps the loop's instead of adding to it.  Pays off when the model
    #: costs about as much as the rest (scikit-learn forests) and a second core is free;
    #: the compiled runtime is cheaper than the hand-off.
    scoring_process: bool = False
    #: ``auto`` (compiled when it reproduces the model, else sklearn), ``sklearn``,
    #: ``compiled`` or ``onnx``.  A faster runtime is only used after it matches
    #: scikit-learn on the model's reference sample within its tolerance; see
    #: driftline.model.runtimes.compiled and driftline.model.runtimes.onnx.
    model_runtime: str = "auto"
    onnx_tolerance: float = 1e-5
    #: ``compiled``: numpy preprocessing and direct tree calls; same bits expected.
    compiled_tolerance: float = 1e-12
    metrics_host: str = "0.0.0.0"
    metrics_port: int = config.DEFAULT_METRICS_PORT
    #: POST /alerts needs ``Authorization: Bearer <token>`` when set (never in a repr).
    alerts_token: BearerToken | None = field(default=None, repr=False)
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    max_event_bytes: int = 64 * 1024
    #: The producer's ``message.max.bytes`` (explicit, not librdkafka's default by
    #: accident): dead letters are cut to fit it and the dead-letter topic's own limit.
    producer_max_message_bytes: int = PRODUCER_MAX_MESSAGE_BYTES
    #: The consumer's ``fetch.max.bytes``: a fetch returns at least one whole record batch
    #: whatever its size, and librdkafka must be able to receive it (a 20 MB event is
    #: read, rejected as oversized and dead-lettered, not left blocking its partition).
    fetch_max_bytes: int = 64 * 1024 * 1024
    #: Future-dated events (``driftline.core.clock_skew``): how far ahead of the wall
    #: clock an event may be, and how far ahead of a replaying partition's own clock.
    max_clock_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS
    max_replay_jump_ms: int = DEFAULT_MAX_REPLAY_JUMP_MS
    eviction_interval_s: float = 30.0
    native_threads: int = 1
    model_poll_interval_s: float = 5.0
    changelog: bool = True
    exactly_once: bool = False
    #: Exactly-once: how long the broker keeps a transaction open (an abandoned one blocks
    #: read_committed readers until then), and how long librdkafka lets its records wait.
    transaction_timeout_s: float = 15.0
    group_instance_id: str | None = None
    restore_timeout_s: float = 300.0
    broker_probe_interval_s: float = 2.0
    #: Drift monitoring against the model's reference profile (off until it is complete).
    drift: bool = False
    retrain_topic: str = "retrain-requests"
    drift_checkpoint_interval_s: float = 30.0  # monitor checkpoints (and one at shutdown)
    drift_events_per_day: float | None = None  # default: from the reference profile
    #: Monitor events older than the reference period too (default: they are skipped,
    #: counted and logged by ``driftline.observability.drift_coverage``).
    drift_from_start: bool = False
    retrain_persistence_s: float = 600.0
    #: Scheduled re-scoring (``driftline.core.ticks``): every customer in state scored
    #: again at each event-time boundary of this period (``driftline worker`` defaults to
    #: a day); None: events only.
    tick_ms: int | None = None
    #: No ticks at boundaries before this event time (epoch ms): a replay that warms the
    #: state up publishes no re-scores of the past.  None: every boundary.
    tick_from_ms: int | None = None
    #: Reason codes (``driftline.reason_codes``): the top that many feature contributions
    #: on every event prediction; None (default): none, and no work for them.
    explain: int | None = None
    retrain_cooldown_s: float = 86400.0
    consumer_config: dict[str, Any] = field(default_factory=dict)
    producer_config: dict[str, Any] = field(default_factory=dict)

    @property
    def changelog_topic(self) -> str:
        return f"{self.group_id}-{self.input_topic}-changelog"

    @property
    def drift_state_topic(self) -> str:
        return f"{self.group_id}-drift-state"


def transactional_id(group_id: str, identity: str) -> str:
    """An exactly-once worker's transactional id: stable per group and instance.

    ``identity`` is the static group instance id, else the worker id.  Whoever starts a
    producer under the same id fences the previous one and aborts its open transaction:
    a restarted instance does, and so can an operator (or a test) standing in for the
    broker's transaction timeout.
    """
    return f"driftline-{group_id}-{identity}"
