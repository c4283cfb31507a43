-- TigerBeetle-like semantics on PostgreSQL: balance limits enforced by the database, holds that are
-- posted (in steps), voided or expired exactly once, disputes, payouts, and a charge journal per step.

ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check
    CHECK (kind IN ('tenant', 'escrow', 'vendor', 'dispute', 'exchange', 'external'));
-- only the accounts outside the exchange (funding, payout) may go below zero
ALTER TABLE accounts ADD CONSTRAINT accounts_balance_limit CHECK (kind = 'external' OR balance >= 0);

ALTER TABLE holds DROP CONSTRAINT holds_status_check;
UPDATE holds SET status = 'posted' WHERE status = 'settled';
ALTER TABLE holds ADD CONSTRAINT holds_status_check CHECK (status IN ('pending', 'posted', 'voided', 'expired'));
-- running totals of what the hold has paid so far (cumulative; checked against the transfers)
ALTER TABLE holds
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN charged_dtu_micro_hours bigint NOT NULL DEFAULT 0,
    ADD COLUMN charged_gpu_micro_hours bigint NOT NULL DEFAULT 0,
    ADD COLUMN vendor_micro_eur   bigint NOT NULL DEFAULT 0,
    ADD COLUMN disputed_micro_eur bigint NOT NULL DEFAULT 0,
    ADD COLUMN fee_micro_eur      bigint NOT NULL DEFAULT 0,
    ADD COLUMN rounding_micro_eur bigint NOT NULL DEFAULT 0,
    ADD COLUMN released_micro_eur bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT holds_never_overspent CHECK (
        vendor_micro_eur + disputed_micro_eur + fee_micro_eur + rounding_micro_eur + released_micro_eur <= amount);

-- one row per charge step (an incremental charge, the final one, a dispute refund): invoices and
-- payout statements per period are sums over these
CREATE TABLE charges (
    charge_id        uuid PRIMARY KEY,   -- derived from the causing event
    job_id           uuid        NOT NULL REFERENCES holds,
    kind             text        NOT NULL CHECK (kind IN ('usage', 'final', 'refund', 'dispute_paid')),
    dtu_micro_hours  bigint      NOT NULL,
    gpu_micro_hours  bigint      NOT NULL,
    vendor_micro_eur bigint      NOT NULL,
    disputed_micro_eur bigint    NOT NULL,
    fee_micro_eur    bigint      NOT NULL,
    rounding_micro_eur bigint    NOT NULL,
    total_micro_eur  bigint      NOT NULL,   -- what the tenant paid in this step (negative: a refund)
    event_id         uuid        NOT NULL,
    at               timestamptz NOT NULL
);
CREATE INDEX charges_by_job ON charges (job_id);
CREATE INDEX charges_by_time ON charges (at);
INSERT INTO charges SELECT job_id, job_id, 'final', dtu_micro_hours, gpu_micro_hours, vendor_micro_eur, 0,
    fee_micro_eur, 0, total_micro_eur, job_id, at FROM invoice_lines;
UPDATE holds h SET charged_dtu_micro_hours = l.dtu_micro_hours, charged_gpu_micro_hours = l.gpu_micro_hours,
    vendor_micro_eur = l.vendor_micro_eur, fee_micro_eur = l.fee_micro_eur,
    released_micro_eur = h.amount - l.total_micro_eur
    FROM invoice_lines l WHERE l.job_id = h.job_id;
DROP TABLE invoice_lines;

CREATE TABLE disputes (
    job_id       uuid PRIMARY KEY REFERENCES holds,
    vendor       text        NOT NULL,
    tenant       text        NOT NULL,
    claimed_dtu_micro_hours  bigint NOT NULL,
    witness_dtu_micro_hours  bigint,
    disputed_dtu_micro_hours bigint NOT NULL,
    held_micro_eur bigint    NOT NULL CHECK (held_micro_eur > 0),
    status       text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'vendor', 'tenant')),
    opened_at    timestamptz NOT NULL,
    resolved_at  timestamptz,
    note         text        NOT NULL DEFAULT ''
);

-- money paid out to vendors, one row per payout reference
CREATE TABLE payouts (
    vendor      text        NOT NULL,
    reference   text        NOT NULL,
    amount      bigint      NOT NULL CHECK (amount > 0),
    transfer_id uuid        NOT NULL REFERENCES transfers,
    at          timestamptz NOT NULL,
    PRIMARY KEY (vendor, reference)
);
