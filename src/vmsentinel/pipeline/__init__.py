"""The one sweep pipeline: a policy compiled for running, and ``sweep_once``."""
