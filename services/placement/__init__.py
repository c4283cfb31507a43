"""placement: where matched jobs run.

Owns: workloads (job, vendor, node, status). Consumes: FundsHeld (settlement: a match whose money
is in escrow), WorkloadReported (vendor agents).
Emits: WorkloadAssigned on the vendor's subject (the agent runs it), then
WorkloadStarted / WorkloadFinished / WorkloadFailed as the vendor reports.
"""
