"""Intake use cases: each takes the transaction and a batch of fresh events, returns outgoing events."""

from __future__ import annotations

from typing import Any

import asyncpg

from libs.common.envelope import Envelope, derive
from libs.common.events.intake import JobAccepted, JobCancelled, JobCancelRefused, JobRejected
from libs.common.events.sdk import JobCancelRequested, JobSubmitted
from libs.common.ids import job_id
from libs.common.manifest import FieldError, ManifestError, manifest_identity, validate_manifest
from libs.common.subjects import tenant_party
from services.intake import domain, store

SOURCE = "intake"


async def submit_jobs(tx: asyncpg.Connection, events: list[Envelope[JobSubmitted]]) -> list[Envelope[Any]]:
    """Validate each submitted manifest against its submission time; accept new jobs, refuse bad ones.

    Resubmitting a manifest whose tenant and name already name a job creates nothing new (it is the
    same job, as `kubectl apply` of an unchanged object is).
    """
    out: list[Envelope[Any]] = []
    timeline: list[tuple[Any, ...]] = []
    for ev in events:
        tenant, name = manifest_identity(ev.payload.manifest)
        try:
            req = validate_manifest(ev.payload.manifest, submitted_at=ev.time)
            if req.party != ev.party:  # a tenant submits only into its own namespace
                raise ManifestError([FieldError(field="metadata.namespace", reason=(
                    f"{req.tenant!r} is not the submitting tenant ({ev.party})"))])
        except ManifestError as e:
            rejected = derive(ev, JobRejected(tenant=tenant, name=name, errors=e.errors), source=SOURCE)
            out.append(rejected)
            if tenant and name:
                timeline.append((job_id(tenant, name), tenant, name, rejected.id, ev.time, "JobRejected",
                                 SOURCE, domain.describe(rejected)))
            continue
        jid = job_id(req.tenant, req.name)
        accepted = derive(ev, JobAccepted(job_id=jid, request=req), source=SOURCE, party=req.party,
                          correlation_id=jid)
        if await store.insert_job(tx, job_id=jid, tenant=req.tenant, name=req.name, manifest=ev.payload.manifest,
                                  request_json=req.model_dump_json(), at=ev.time):
            out.append(accepted)
            timeline.append((jid, req.tenant, req.name, accepted.id, ev.time, "JobAccepted", SOURCE,
                             domain.describe(accepted)))
        else:
            status, existing = await store.job_request(tx, req.tenant, req.name)
            if existing == req:
                timeline.append((jid, req.tenant, req.name, ev.id, ev.time, "JobResubmitted", SOURCE,
                                 f"resubmitted: job already exists (status {status}); nothing changed"))
                continue
            # a job is immutable once accepted: a different spec under its name is refused, not dropped
            rejected = derive(ev, JobRejected(tenant=req.tenant, name=req.name, errors=[FieldError(
                field="metadata.name", reason=(f"job {req.tenant}/{req.name} already exists (status {status}) "
                                               "with a different spec; use a new name"))]),
                source=SOURCE, party=req.party, correlation_id=jid)
            out.append(rejected)
            timeline.append((jid, req.tenant, req.name, rejected.id, ev.time, "JobRejected", SOURCE,
                             domain.describe(rejected)))
    await store.add_timeline(tx, timeline)
    return out


async def cancel_jobs(tx: asyncpg.Connection, events: list[Envelope[JobCancelRequested]]) -> list[Envelope[Any]]:
    """Cancel each named job that has not ended (JobCancelled), or say why not (JobCancelRefused).

    A tenant cancels only its own jobs. Cancelling a cancelled job changes nothing: the request is
    noted in the job's timeline (JobCancelRepeated, under the request's id) and nothing is emitted.
    """
    ids = {ev.id: job_id(ev.payload.tenant, ev.payload.name) for ev in events}
    status: dict[Any, str] = await store.lock_statuses(tx, sorted(set(ids.values())))
    out: list[Envelope[Any]] = []
    timeline: list[tuple[Any, ...]] = []
    updates: list[tuple[Any, ...]] = []
    for ev in events:
        p, jid = ev.payload, ids[ev.id]
        if ev.party != tenant_party(p.tenant):  # a tenant cancels only in its own namespace
            out.append(derive(ev, JobCancelRefused(tenant=p.tenant, name=p.name, reason=(
                f"tenant {p.tenant!r} is not the requesting tenant ({ev.party})")), source=SOURCE))
            continue
        verdict, line = domain.cancel_verdict(p.tenant, p.name, status.get(jid))
        if verdict == "already":
            timeline.append((jid, p.tenant, p.name, ev.id, ev.time, "JobCancelRepeated", SOURCE, line))
            continue
        if verdict == "refuse":
            refused = derive(ev, JobCancelRefused(tenant=p.tenant, name=p.name, reason=line), source=SOURCE,
                             correlation_id=jid)
            out.append(refused)
            if jid in status:  # an unknown job gets no timeline: it would read as a job that exists
                timeline.append((jid, p.tenant, p.name, refused.id, ev.time, "JobCancelRefused", SOURCE,
                                 domain.describe(refused)))
            continue
        cancelled = derive(ev, JobCancelled(job_id=jid, tenant=p.tenant, name=p.name, reason=p.reason,
                                            previous_status=status[jid]), source=SOURCE, correlation_id=jid)
        status[jid] = "cancelled"
        out.append(cancelled)
        f = domain.facts_of(cancelled)
        updates.append((jid, "cancelled", domain.RANK["cancelled"], ev.time, None, None, f["outcome"], None))
        timeline.append((jid, p.tenant, p.name, cancelled.id, ev.time, "JobCancelled", SOURCE,
                         domain.describe(cancelled)))
    await store.advance_many(tx, updates)
    await store.add_timeline(tx, timeline)
    return out


async def record_facts(tx: asyncpg.Connection, events: list[Envelope[Any]]) -> list[Envelope[Any]]:
    """Fold later facts about jobs (from any service) into the lifecycle view and timeline.

    One statement per batch for each table; status updates go in job order, so intake's consumers,
    which run side by side, always lock shared job rows in the same order.
    """
    names = await store.job_names(tx, [e.correlation_id for e in events])
    known = [ev for ev in events if ev.correlation_id in names]  # others are not jobs (e.g. an offer's fact)
    updates = []
    for ev in sorted(known, key=lambda e: e.correlation_id):  # stable: a job's facts keep their order
        status = domain.status_of(ev)
        if status is not None:
            f = domain.facts_of(ev)
            updates.append((ev.correlation_id, status, domain.RANK[status], ev.time, f.get("vendor"), f.get("node"),
                            f.get("outcome"), f.get("total_micro_eur")))
    await store.advance_many(tx, updates)
    await store.add_timeline(tx, [(ev.correlation_id, *names[ev.correlation_id], ev.id, ev.time, ev.type, ev.source,
                                   domain.describe(ev)) for ev in known])
    return []
