-- a node leaves the market by silence (its heartbeats stopped) or because its vendor withdrew its offer,
-- saying why in `reason`
ALTER TABLE lost_offers ADD COLUMN cause text NOT NULL DEFAULT 'silent' CHECK (cause IN ('silent', 'withdrawn'));
ALTER TABLE lost_offers ADD COLUMN reason text NOT NULL DEFAULT '';
