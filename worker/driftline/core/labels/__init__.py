"""Labels, defined once: the churn label beside the features, and its live resolution.

``definition``: the ``[label]`` table of the feature spec, as a ``ChurnDefinition`` that
both the offline training set (``core.offline.training_set``) and the live outcome join
(``resolver``) read.  ``resolver``: pending predictions of one partition, resolved by the
events that follow them (or their silence), decided by the event-time watermark.
"""

from driftline.core.labels.definition import (
    KIND_OCCURRENCE,
    KIND_SILENCE,
    LABEL_KINDS,
    ChurnDefinition,
    label_definition,
)

__all__ = [
    "KIND_OCCURRENCE",
    "KIND_SILENCE",
    "LABEL_KINDS",
    "ChurnDefinition",
    "label_definition",
]
