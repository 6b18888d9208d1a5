"""Fleets: many hosts' sentinels over one NATS JetStream event bus, and a central service that
keeps and shows what all of them see (``serve --fleet``)."""
