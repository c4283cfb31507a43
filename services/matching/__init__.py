"""matching: the order book.

Owns: open offers with their free capacity, pending jobs and reservations (a local projection fed by
vendor offers and placement facts; no other service's schema is read).
Consumes: OfferPublished and OfferWithdrawn (agents, in one order), JobAccepted and JobCancelled (intake: a
waiting job leaves the book), WorkloadFinished/Failed/Cancelled (placement) and InsufficientFunds (settlement),
which free capacity;
PlacementFailed (placement: a workload that never started), after which the job is booked again elsewhere.
Emits: JobMatched, JobUnmatchable (why, per constraint), JobExpired, OfferLost (heartbeats stopped, or the
vendor withdrew the offer).
"""
