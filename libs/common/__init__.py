"""Shared plumbing for every strongmoose service and client: the event envelope and payloads,
subjects and streams, the batch consumer runtime, inbox/outbox, migrations, settings, telemetry."""
