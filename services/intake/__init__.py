"""intake: the front door for consumers' jobs.

Owns: jobs as submitted (manifest, normalised request) and their lifecycle view (status + timeline).
Consumes: JobSubmitted and JobCancelRequested (sdk); every later fact about a job (matching, placement,
metering, settlement) to keep the lifecycle view. Emits: JobAccepted, JobRejected (naming each field
and reason), JobCancelled, JobCancelRefused.
"""
