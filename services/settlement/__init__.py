"""settlement: the money.

Owns: a double-entry ledger in integer micro-euros (accounts, immutable transfers), holds per job,
invoice lines. Consumes: JobMatched (hold the cap x expected DTU-hours), MeterClosed (charge the
vendor's price x measured DTU-hours plus the exchange fee, pay the vendor, release the rest). A job
booked again because its workload never started keeps its one hold, moved to the new booking
(PlacementFailed keeps it from expiring meanwhile; JobExpired returns it).
Emits: FundsHeld, ChargePosted, HoldReleased.
"""
