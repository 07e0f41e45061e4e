"""The Faust engine: a faust-streaming app that runs Driftline's scoring processor.

It consumes the same input topic, runs the same ``driftline.processor.ScoringProcessor``
on micro-batches taken from a Faust stream, and writes the same predictions, dead letters
(same headers and reasons) and state changelog (same topic and record format) as the Kafka
engine (``driftline.engine.kafka``), with the same metric names and health endpoints.
What it does not offer (exactly-once, drift monitoring, a scoring process) is refused at
start and listed in the README's engine table.  ``driftline worker --engine faust``.
"""
