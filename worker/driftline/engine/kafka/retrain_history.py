"""Read the retrain-requests topic back, so a starting worker knows what was already asked.

The requests topic is the shared record of every worker's retrain requests (and of the
alert webhook's); :meth:`driftline.core.drift.trigger.RetrainTrigger.recall` rebuilds the
cooldown, weekly cap and in-flight gates from it.  The topic is read from the beginning to
partition EOF (fetch-based, which is right on Tansu, whose ListOffsets high watermark is
not) with no consumer group: nothing is committed.
"""

from __future__ import annotations

import logging

import msgspec

from driftline.core.drift.trigger import RetrainRequest
from driftline.engine.kafka.topic_reader import read_to_end

log = logging.getLogger(__name__)


def read_retrain_requests(
    bootstrap: str, topic: str, timeout_s: float = 15.0
) -> list[RetrainRequest]:
    """Every decodable request on ``topic`` (undecodable records are logged and skipped).

    Raises ``TimeoutError`` if the topic cannot be read to its end in ``timeout_s``: the
    caller must not guess the gates from a partial history.
    """
    requests: list[RetrainRequest] = []
    for message in read_to_end(bootstrap, topic, timeout_s):
        try:
            requests.append(msgspec.json.decode(message.value() or b"", type=RetrainRequest))
        except msgspec.DecodeError as exc:
            log.warning("skipping an undecodable record on %s: %s", topic, exc)
    return requests
