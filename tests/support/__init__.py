"""Test helpers that are not fixtures: generators written apart from the product code."""
