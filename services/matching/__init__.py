"""matching: the order book.

Owns: open offers with their free capacity, pending jobs and reservations (a local projection fed by
vendor offers and placement facts; no other service's schema is read).
Consumes: OfferPublished (agents), JobAccepted and JobCancelled (intake: a waiting job leaves the book),
WorkloadFinished/Failed/Cancelled (placement) and InsufficientFunds (settlement), which free capacity.
Emits: JobMatched, JobUnmatchable (why, per constraint), JobExpired.
"""
