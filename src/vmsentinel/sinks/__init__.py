"""Where findings go: OCSF JSON lines and a SQLite store (more sinks plug in here)."""
