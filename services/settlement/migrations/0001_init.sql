-- balance = credits - debits; every transfer debits one account and credits another by the same
-- amount, so the balances of all accounts always sum to zero
CREATE TABLE accounts (
    name    text PRIMARY KEY,          -- tenant:xyz, escrow:xyz, vendor:elastx, exchange:fees, external:funding
    kind    text   NOT NULL CHECK (kind IN ('tenant', 'escrow', 'vendor', 'exchange', 'external')),
    balance bigint NOT NULL DEFAULT 0
);
CREATE TABLE transfers (
    transfer_id uuid PRIMARY KEY,      -- derived from the causing event: a replay posts nothing twice
    debit       text        NOT NULL REFERENCES accounts,
    credit      text        NOT NULL REFERENCES accounts,
    amount      bigint      NOT NULL CHECK (amount > 0),
    kind        text        NOT NULL,  -- deposit, hold, charge, fee, release
    job_id      uuid,                  -- null for a deposit
    event_id    uuid        NOT NULL,
    at          timestamptz NOT NULL,
    CHECK (debit <> credit)
);
CREATE INDEX transfers_by_job ON transfers (job_id);
CREATE TABLE holds (
    job_id     uuid PRIMARY KEY,
    tenant     text   NOT NULL,
    name       text   NOT NULL,
    vendor     text   NOT NULL,
    amount     bigint NOT NULL CHECK (amount >= 0),
    price_micro_eur_per_dtu_hour bigint NOT NULL,
    gpus       int    NOT NULL DEFAULT 0,
    price_micro_eur_per_gpu_hour bigint NOT NULL DEFAULT 0,
    status     text   NOT NULL CHECK (status IN ('pending', 'settled')),
    held_at    timestamptz NOT NULL
);
CREATE TABLE invoice_lines (
    job_id          uuid PRIMARY KEY,
    tenant          text   NOT NULL,
    name            text   NOT NULL,
    vendor          text   NOT NULL,
    dtu_micro_hours bigint NOT NULL,
    price_micro_eur_per_dtu_hour bigint NOT NULL,
    gpu_micro_hours bigint NOT NULL DEFAULT 0,
    price_micro_eur_per_gpu_hour bigint NOT NULL DEFAULT 0,
    vendor_micro_eur bigint NOT NULL,
    fee_micro_eur   bigint NOT NULL,
    total_micro_eur bigint NOT NULL,
    at              timestamptz NOT NULL
);
-- money paid in, one row per payment reference
CREATE TABLE deposits (
    tenant      text        NOT NULL,
    reference   text        NOT NULL,
    amount      bigint      NOT NULL CHECK (amount > 0),
    transfer_id uuid        NOT NULL REFERENCES transfers,
    at          timestamptz NOT NULL,
    PRIMARY KEY (tenant, reference)
);
