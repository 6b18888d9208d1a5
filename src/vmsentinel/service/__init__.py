"""The sentinel as a service: the watcher and an authenticated HTTP API and dashboard in one
process (``vmsentinel serve``). Users, tokens, sessions, triage and the audit log live in the
service's own SQLite file; findings stay in the watch's store, which this package only reads."""
