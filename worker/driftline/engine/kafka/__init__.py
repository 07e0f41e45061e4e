"""Kafka (and Kafka-protocol) plumbing: admin, producers, consumers."""
