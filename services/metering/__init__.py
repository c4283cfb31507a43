"""metering: what was really used.

Owns: a meter per workload (integrated DTU-hours) and the usage samples behind it.
Consumes: UsageSampled (vendor agents), WorkloadStarted/Finished/Failed (placement).
Emits: MeterClosed with the final measured DTU-hours once the workload ended and its last sample is in.
"""
