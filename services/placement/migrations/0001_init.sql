CREATE TABLE workloads (
    workload_id uuid PRIMARY KEY,
    job_id      uuid        NOT NULL UNIQUE,
    tenant      text        NOT NULL,
    name        text        NOT NULL,
    vendor      text        NOT NULL,
    node        text        NOT NULL,
    vcpu        numeric     NOT NULL,
    memory_gib  numeric     NOT NULL,
    status      text        NOT NULL CHECK (status IN ('assigned', 'running', 'succeeded', 'failed')),
    assigned_at timestamptz NOT NULL,
    started_at  timestamptz,
    ended_at    timestamptz,
    exit_code   int,
    reason      text
);
