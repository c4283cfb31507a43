"""metering: what was really used, checked rather than believed.

Owns: a meter per workload (integrated DTU-hours, its witness and its flags) and the usage samples behind it.
Consumes: UsageSampled (vendor agents), WorkloadStarted/Finished/Failed (placement).
Emits: MeterProgressed (cumulative reading of a running workload, once per charge interval) and
MeterClosed (the final reading once the workload ended and its last sample is in): claimed, billable
(clamped to the allocation), witness and disputed DTU-hours, rejected samples and missing seqs.
"""
