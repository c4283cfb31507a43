"""The consumer's job manifest: parsing, validation with field-named errors, and its normalised form.

The first manifest ever written for strongmoose must always be accepted as it stands, so the
Kubernetes-shaped names (`apiVersion`, `kind`, `metadata.namespace`, camelCase spec fields) are kept
and every field beyond it is optional with a documented default:

| field                          | default                                  |
| ------------------------------ | ---------------------------------------- |
| spec.resources.cpu             | 1 (vCPU; Kubernetes quantities: 2, "500m") |
| spec.resources.memory          | "4Gi" (Kubernetes quantities: Gi, Mi, G, M) |
| spec.resources.gpu             | 0                                        |
| spec.expectedDuration          | "1h" (also "90s", "15m", "2h30m", or seconds) |
| spec.command                   | ["python3", spec.scriptPath]              |
| spec.restrictions              | none (any region, any vendor)            |
| spec.restrictions.excludeVendor | none (a deny list of vendors)           |
| spec.restrictions.attributes   | none (compliance attributes every offer must have, e.g. gdpr) |
| spec.notBefore                 | none (the job may start at once)         |
| spec.maxEuroTotal              | none (no budget beyond the price caps)   |
| spec.preference                | cheapest (or soonest)                    |

`restrictions.region` matches an offer's region code, its country ("Sweden") or "EU" for any
vendor in an EU member state. `maxEuroPerDTU` is the price cap per DTU-hour (one vCPU with up to
4 GiB for one hour), in EUR with at most 6 decimals; money is held as integer micro-euros. GPUs
are priced per GPU-hour on their own: a job asking for `resources.gpu` must also cap that price with
`maxEuroPerGPUHour`.

`preference: cheapest` books the cheapest run the offers' calendars allow before `notAfter` (waiting for
cheaper hours if the deadline leaves room); `soonest` the earliest run, the cheaper of equally early
ones. `maxEuroTotal` is a budget for the whole expected run (its price per hour times its expected
duration), on top of the caps per DTU-hour and GPU-hour. `notBefore` is the earliest start.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

API_VERSION = "strongmoose.dsoderlund.consulting/v1alpha1"
KINDS = {"job", "Job"}
MICRO = Decimal(1_000_000)
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def is_dns_label(v: str) -> bool:
    """A Kubernetes name (and a valid subject token for the party it names)."""
    return bool(_NAME.fullmatch(v))


def dtu_rate(vcpu: Decimal, memory_gib: Decimal) -> Decimal:
    """DTUs of a workload or machine: max(vCPU, memory GiB / 4) — one DTU is one vCPU with up to 4 GiB."""
    return max(Decimal(vcpu), Decimal(memory_gib) / 4)


class FieldError(BaseModel):
    """One reason a manifest was refused: which field, and why."""

    model_config = ConfigDict(frozen=True)
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


class ManifestError(ValueError):
    def __init__(self, errors: list[FieldError]):
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


class Resources(BaseModel):
    """Normalised resources of one job."""

    model_config = ConfigDict(frozen=True)
    vcpu: Decimal = Decimal(1)
    memory_gib: Decimal = Decimal(4)
    gpu: int = 0
    gpu_model: str | None = None

    @property
    def dtu_rate(self) -> Decimal:
        """DTUs this job occupies."""
        return dtu_rate(self.vcpu, self.memory_gib)


class Restrictions(BaseModel):
    model_config = ConfigDict(frozen=True)
    region: str | None = None
    vendors: tuple[str, ...] = ()  # allow list; empty: every vendor
    deny_vendors: tuple[str, ...] = ()
    attributes: tuple[str, ...] = ()  # compliance attributes an offer must all have, lower case


class JobRequest(BaseModel):
    """A manifest after validation and defaults: what matching, placement and settlement work from."""

    model_config = ConfigDict(frozen=True)
    tenant: str  # the manifest's namespace
    name: str
    image: str | None = None
    not_after: AwareDatetime
    max_micro_eur_per_dtu_hour: int = Field(gt=0)
    max_micro_eur_per_gpu_hour: int | None = Field(None, gt=0)  # required when resources.gpu > 0
    command: tuple[str, ...]
    env: dict[str, str] = {}
    resources: Resources = Resources()
    expected_duration_s: int = 3600
    restrictions: Restrictions = Restrictions()
    earliest_start: AwareDatetime | None = None
    max_micro_eur_total: int | None = Field(None, gt=0)  # budget for the whole expected run
    preference: Literal["cheapest", "soonest"] = "cheapest"

    @property
    def party(self) -> str:
        return f"t-{self.tenant}"


MAX_VCPU = Decimal(1024)
MAX_MEMORY_GIB = Decimal(64 * 1024)


def parse_quantity_cpu(v: Any) -> Decimal:
    s = str(v).strip()
    d = Decimal(s[:-1]) / 1000 if s.endswith("m") else Decimal(s)
    if not d.is_finite() or d <= 0 or d > MAX_VCPU:
        raise ValueError(f"must be a positive number of vCPUs such as 2 or 500m, at most {MAX_VCPU}")
    return d


_MEM_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_quantity_memory_gib(v: Any) -> Decimal:
    s = str(v).strip()
    number, factor = s, 1
    for unit, f in _MEM_UNITS.items():
        if s.endswith(unit):
            number, factor = s[: -len(unit)], f
            break
    n = Decimal(number)  # plain bytes when there is no unit, as Kubernetes reads them
    if not n.is_finite() or n <= 0 or n > MAX_MEMORY_GIB * 2**30:  # bounded before multiplying
        raise ValueError("must be a positive quantity such as 4Gi or 512Mi")
    d = n * factor / 2**30
    if d > MAX_MEMORY_GIB:
        raise ValueError(f"must be at most {MAX_MEMORY_GIB}Gi")
    return d


def parse_duration_s(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError("must be a duration such as 90s, 15m or 1h")
    if isinstance(v, int):
        seconds = v
    else:
        m = _DURATION.match(str(v).strip())
        if not m or not any(m.groups()):
            raise ValueError("must be a duration such as 90s, 15m, 1h or 2h30m")
        h, mi, s = (int(g or 0) for g in m.groups())
        seconds = h * 3600 + mi * 60 + s
    if seconds <= 0 or seconds > 366 * 24 * 3600:
        raise ValueError("must be between 1 second and 366 days")
    return seconds


_PLAIN_NUMBER = re.compile(r"-?[0-9]*\.?[0-9]*(?:[eE][+-]?[0-9]+)?", re.ASCII)


def euro_to_micro(v: Any) -> int:
    """EUR (at most 6 decimals) to integer micro-euros; floats go through their shortest repr."""
    if isinstance(v, bool):
        raise ValueError("must be a number of euros")
    try:
        d = Decimal(str(v))
    except InvalidOperation:
        raise ValueError("must be a number of euros") from None
    if not d.is_finite():
        raise ValueError("must be a finite number of euros")
    if isinstance(v, str) and not _PLAIN_NUMBER.fullmatch(v):  # Decimal also takes "1_000", " 5", "٣"
        raise ValueError("must be a plain number of euros in ASCII digits, e.g. 12.50")
    if d <= 0:
        raise ValueError("must be greater than 0")
    if d > 1_000_000:  # checked before any arithmetic: an absurd exponent must not overflow
        raise ValueError("is larger than 1,000,000 EUR")
    if d.as_tuple().exponent < -6 and d != d.quantize(Decimal("0.000001"), rounding=ROUND_DOWN):  # type: ignore[operator]
        raise ValueError("has more than 6 decimals (a micro-euro is the smallest unit)")
    return int(d.scaleb(6))


class _Raw(BaseModel):
    """Pydantic shape of the manifest; field-level checks that need no context."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    class Metadata(BaseModel):
        model_config = ConfigDict(extra="ignore")
        name: str
        namespace: str
        labels: dict[str, str] = {}

        @field_validator("name", "namespace")
        @classmethod
        def dns_label(cls, v: str) -> str:
            if not is_dns_label(v):
                raise ValueError("must be a DNS-1123 label: lower-case letters, digits and '-', at most 63")
            return v

    class Spec(BaseModel):
        model_config = ConfigDict(extra="forbid", validate_default=True)

        class Res(BaseModel):
            model_config = ConfigDict(extra="forbid", validate_default=True)
            cpu: Any = 1
            memory: Any = "4Gi"
            gpu: int = Field(0, ge=0, le=64)
            gpuModel: str | None = None

            @field_validator("cpu")
            @classmethod
            def _cpu(cls, v: Any) -> Decimal:
                try:
                    return parse_quantity_cpu(v)
                except ArithmeticError:  # InvalidOperation, Overflow
                    raise ValueError("must be a positive number of vCPUs such as 2 or 500m") from None

            @field_validator("memory")
            @classmethod
            def _mem(cls, v: Any) -> Decimal:
                try:
                    return parse_quantity_memory_gib(v)
                except ArithmeticError:  # InvalidOperation, Overflow
                    raise ValueError("must be a positive quantity such as 4Gi or 512Mi") from None

        class Restr(BaseModel):
            model_config = ConfigDict(extra="forbid")
            region: str | None = None
            vendor: list[str] | str | None = None
            excludeVendor: list[str] | str | None = None
            attributes: list[str] = []

        image: str | None = None
        notAfter: AwareDatetime
        notBefore: AwareDatetime | None = None
        maxEuroPerDTU: Any
        maxEuroPerGPUHour: Any = None
        maxEuroTotal: Any = None
        preference: Literal["cheapest", "soonest"] = "cheapest"
        scriptPath: str | None = None
        command: list[str] | None = None
        args: list[str] = []
        env: dict[str, str] = {}
        resources: Res = Res()
        expectedDuration: Any = "1h"
        restrictions: Restr = Restr()

        @field_validator("maxEuroPerDTU")
        @classmethod
        def _cap(cls, v: Any) -> int:
            return euro_to_micro(v)

        @field_validator("maxEuroPerGPUHour", "maxEuroTotal")
        @classmethod
        def _gpu_cap(cls, v: Any) -> int | None:
            return None if v is None else euro_to_micro(v)

        @field_validator("expectedDuration")
        @classmethod
        def _dur(cls, v: Any) -> int:
            return parse_duration_s(v)

        @field_validator("env", mode="before")
        @classmethod
        def _env(cls, v: Any) -> Any:
            # YAML turns `PORT: 80` into an int; Kubernetes users expect env values as strings
            if isinstance(v, dict):
                return {k: str(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else x
                        for k, x in v.items()}
            return v

    apiVersion: str
    kind: str
    metadata: Metadata
    spec: Spec

    @field_validator("apiVersion")
    @classmethod
    def _api(cls, v: str) -> str:
        if v != API_VERSION:
            raise ValueError(f"must be {API_VERSION}")
        return v

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in KINDS:
            raise ValueError("must be job (or Job)")
        return v


MAX_MANIFEST_BYTES = 64 * 1024  # a manifest describes work; data travels by reference (paths, env)
MAX_DEADLINE_AHEAD = timedelta(days=366)


def validate_manifest(doc: Any, *, submitted_at: datetime) -> JobRequest:
    """Validate a manifest as submitted at `submitted_at` (the event time, never the wall clock).

    Raises ManifestError naming every offending field and the reason.
    """
    if not isinstance(doc, dict):
        raise ManifestError([FieldError(field="(manifest)", reason="must be a mapping (a YAML/JSON object)")])
    size = len(json.dumps(doc, default=str))
    if size > MAX_MANIFEST_BYTES:
        raise ManifestError([FieldError(field="(manifest)", reason=(
            f"is {size} bytes as JSON; at most {MAX_MANIFEST_BYTES} are accepted"))])
    try:
        raw = _Raw.model_validate(doc)
    except ValidationError as e:
        raise ManifestError([_field_error(err) for err in e.errors()]) from None
    s = raw.spec
    errors: list[FieldError] = []
    if s.command:
        command = tuple(s.command) + tuple(s.args)
    elif s.scriptPath:
        command = ("python3", s.scriptPath, *s.args)
    else:
        command = ()
        errors.append(FieldError(field="spec.scriptPath", reason="either spec.scriptPath or spec.command is required"))
    earliest_end = max(submitted_at, s.notBefore or submitted_at).timestamp() + s.expectedDuration
    if s.notBefore is not None and s.notBefore >= s.notAfter:
        errors.append(FieldError(field="spec.notBefore", reason=(
            f"earliest start {s.notBefore.isoformat()} is not before the deadline {s.notAfter.isoformat()}")))
    elif s.notAfter <= submitted_at:
        errors.append(FieldError(field="spec.notAfter", reason=(
            f"deadline {s.notAfter.isoformat()} is already past (submitted {submitted_at.isoformat()})")))
    elif s.notAfter - submitted_at > MAX_DEADLINE_AHEAD:
        errors.append(FieldError(field="spec.notAfter", reason=(
            f"deadline {s.notAfter.isoformat()} is more than {MAX_DEADLINE_AHEAD.days} days ahead")))
    elif s.notAfter.timestamp() < earliest_end:
        errors.append(FieldError(field="spec.notAfter", reason=(
            f"deadline {s.notAfter.isoformat()} leaves less than the expected duration "
            f"of {s.expectedDuration} s{' after spec.notBefore' if s.notBefore else ''}")))
    if s.resources.gpu and s.maxEuroPerGPUHour is None:
        errors.append(FieldError(field="spec.maxEuroPerGPUHour", reason=(
            "is required when spec.resources.gpu is set: GPUs are priced per GPU-hour")))
    vendors = s.restrictions.vendor
    vendor_list = tuple([vendors] if isinstance(vendors, str) else (vendors or []))
    denied = s.restrictions.excludeVendor
    deny_list = tuple([denied] if isinstance(denied, str) else (denied or []))
    if errors:
        raise ManifestError(errors)
    return JobRequest(
        tenant=raw.metadata.namespace,
        name=raw.metadata.name,
        image=s.image,
        not_after=s.notAfter,
        max_micro_eur_per_dtu_hour=s.maxEuroPerDTU,
        max_micro_eur_per_gpu_hour=s.maxEuroPerGPUHour,
        command=command,
        env=s.env,
        resources=Resources(vcpu=s.resources.cpu, memory_gib=s.resources.memory, gpu=s.resources.gpu,
                            gpu_model=s.resources.gpuModel),
        expected_duration_s=s.expectedDuration,
        restrictions=Restrictions(region=s.restrictions.region, vendors=vendor_list, deny_vendors=deny_list,
                                  attributes=tuple(sorted({a.strip().lower() for a in s.restrictions.attributes}))),
        earliest_start=s.notBefore,
        max_micro_eur_total=s.maxEuroTotal,
        preference=s.preference,
    )


def manifest_identity(doc: Any) -> tuple[str, str]:
    """Best-effort (namespace, name) of even an invalid manifest, so a rejection can name its job."""
    md = doc.get("metadata") if isinstance(doc, dict) else None
    if not isinstance(md, dict):
        return ("", "")
    return (str(md.get("namespace") or ""), str(md.get("name") or ""))


def _field_error(err: dict[str, Any]) -> FieldError:
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-")) or "(manifest)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        msg = "is required"
    elif err["type"] == "extra_forbidden":
        msg = "is not a known field"
    return FieldError(field=loc, reason=msg)
