"""settlement: the money.

Owns: a double-entry ledger in integer micro-euros (accounts, immutable transfers), holds per job,
invoice lines. Consumes: JobMatched (hold the cap x expected DTU-hours), MeterClosed (charge the
vendor's price x measured DTU-hours plus the exchange fee, pay the vendor, release the rest).
Emits: FundsHeld, ChargePosted, HoldReleased.
"""
