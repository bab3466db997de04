"""Sinks: destinations that take encoded envelopes and confirm delivery."""
