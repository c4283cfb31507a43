"""placement: where matched jobs run.

Owns: workloads (job, attempt, vendor, node, status), cancels that came before their job's FundsHeld,
nodes matching lost.
Consumes: FundsHeld (settlement: a match whose money is in escrow), WorkloadReported (vendor agents),
JobCancelled (intake), OfferLost (matching: a node whose heartbeats stopped or whose vendor withdrew it).
Emits: WorkloadAssigned on the vendor's subject (the agent runs it), then
WorkloadStarted / WorkloadFinished / WorkloadFailed as the vendor reports; WorkloadCancelled for a job
cancelled before it ran, and WorkloadCancelRequested on the vendor's subject (stop or drop it);
PlacementFailed for a workload that never started (its vendor gave it up, or its node was lost): matching
then books the job again, as a new attempt with a new workload.
"""
