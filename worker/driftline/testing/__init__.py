"""Test helpers shipped with the package, so the demo and the integration tests share them."""
