"""Test fixtures (filled in by the peer harness)."""
