"""Processing engines: the pieces that talk to a stream platform."""
