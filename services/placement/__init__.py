"""placement: where matched jobs run.

Owns: workloads (job, vendor, node, status). Consumes: JobMatched (matching), WorkloadReported
(vendor agents). Emits: WorkloadAssigned on the vendor's subject (the agent runs it), then
WorkloadStarted / WorkloadFinished / WorkloadFailed as the vendor reports.
"""
