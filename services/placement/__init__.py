"""placement: where matched jobs run.

Owns: workloads (job, vendor, node, status), cancels that came before their job's FundsHeld.
Consumes: FundsHeld (settlement: a match whose money is in escrow), WorkloadReported (vendor agents),
JobCancelled (intake).
Emits: WorkloadAssigned on the vendor's subject (the agent runs it), then
WorkloadStarted / WorkloadFinished / WorkloadFailed as the vendor reports; WorkloadCancelled for a job
cancelled before it ran, and WorkloadCancelRequested on the vendor's subject (stop or drop it).
"""
