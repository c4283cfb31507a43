CREATE TABLE offers (
    offer_id        uuid PRIMARY KEY,
    vendor          text        NOT NULL,
    node            text        NOT NULL,
    region          text        NOT NULL,
    country         text        NOT NULL,
    eu              boolean     NOT NULL,
    vcpu            numeric     NOT NULL,
    memory_gib      numeric     NOT NULL,
    gpu_count       int         NOT NULL,
    gpu_model       text,
    arch            text        NOT NULL,
    price_micro_eur_per_dtu_hour bigint NOT NULL CHECK (price_micro_eur_per_dtu_hour > 0),
    price_micro_eur_per_gpu_hour bigint CHECK (price_micro_eur_per_gpu_hour > 0),
    available_from  timestamptz NOT NULL,
    available_until timestamptz NOT NULL,
    illustrative    boolean     NOT NULL DEFAULT false,
    published_at    timestamptz NOT NULL
);
CREATE TABLE pending_jobs (
    job_id      uuid PRIMARY KEY,
    tenant      text        NOT NULL,
    name        text        NOT NULL,
    request     jsonb       NOT NULL,
    accepted_at timestamptz NOT NULL,
    not_after   timestamptz NOT NULL,
    status      text        NOT NULL CHECK (status IN ('waiting', 'matched', 'expired', 'refused'))
);
CREATE INDEX pending_waiting ON pending_jobs (accepted_at) WHERE status = 'waiting';
-- capacity held by a matched job until its workload ends
CREATE TABLE reservations (
    job_id     uuid PRIMARY KEY,
    offer_id   uuid        NOT NULL REFERENCES offers,
    vcpu       numeric     NOT NULL,
    memory_gib numeric     NOT NULL,
    gpu        int         NOT NULL,
    start_at   timestamptz NOT NULL,
    end_at     timestamptz NOT NULL,
    released_at timestamptz
);
CREATE INDEX reservations_active ON reservations (offer_id) WHERE released_at IS NULL;
