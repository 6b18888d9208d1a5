"""Watching guests: sweeps on an interval, a baseline per guest, findings to sinks."""
