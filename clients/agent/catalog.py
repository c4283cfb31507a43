"""Demo vendor offers built from real cloud price catalogs.

The vendor agent's demo vendors come from the SkyPilot price catalogs shipped in
``<data dir>/prices/*.csv`` (see that folder's README): one vendor per provider and region, one
offer per vendor and instance type, priced in integer micro-euros per DTU-hour. Two Swedish
vendors with made-up prices (``elastx``, ``safespring``) are added by :func:`seed_vendor_offers`,
because the seed manifest restricts its job to them and no public catalog lists them.

Pure data loading: no bus, no database, no clock.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path

from pydantic import BaseModel, Field, model_validator

from libs.common.manifest import dtu_rate

# EUR per USD used to convert the catalogs' USD list prices. The caller reads an override from the
# environment variable AGENT_USD_TO_EUR (e.g. Decimal(os.environ["AGENT_USD_TO_EUR"])) and passes it
# in; this module never reads it, so loading stays a pure function of its arguments.
USD_TO_EUR_DEFAULT = Decimal("0.92")

DATA_DIR_ENV = "STRONGMOOSE_DATA"
MICRO_EUR_PER_EUR = Decimal(1_000_000)


def default_data_dir() -> Path:
    """The shared data directory: ``$STRONGMOOSE_DATA``, else ``<repo root>/../shared/data``."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    repo_root = Path(__file__).resolve().parents[2]  # clients/agent/catalog.py -> repo root
    return repo_root.parent / "shared" / "data"


def to_micro_eur(eur: Decimal) -> int:
    """Round an amount of euros to integer micro-euros, half up."""
    return int((eur * MICRO_EUR_PER_EUR).quantize(Decimal(1), rounding=ROUND_HALF_UP))


class CatalogOffer(BaseModel, frozen=True):
    """One vendor's standing offer for one machine type."""

    vendor: str  # "<provider>-<region-slug>", e.g. "aws-eu-north-1", or a seed vendor "elastx"
    node: str  # the provider's instance type, e.g. "m5a.xlarge"
    provider: str  # "aws"; the catalog file's name prefix
    region: str  # the provider's region code exactly as in the catalog, e.g. "eu-north-1"
    country: str  # English country name, e.g. "Sweden"
    continent: str  # "Europe", "North America", "Asia", "Oceania"
    eu: bool  # the country is an EU member state
    vcpu: Decimal = Field(gt=0)
    memory_gib: Decimal = Field(gt=0)
    gpu_count: int = Field(ge=0)
    gpu_model: str | None
    arch: str  # "x86_64" or "arm64"
    price_micro_eur_per_dtu_hour: int = Field(gt=0)
    price_micro_eur_per_gpu_hour: int | None = Field(default=None, gt=0)
    illustrative: bool = False  # True for prices we made up (the seed vendors)

    @model_validator(mode="after")
    def _gpu_fields_agree(self) -> CatalogOffer:
        has_gpu = self.gpu_count > 0
        if (self.gpu_model is not None, self.price_micro_eur_per_gpu_hour is not None) != (has_gpu, has_gpu):
            raise ValueError(
                "gpu_count, gpu_model and price_micro_eur_per_gpu_hour must be all set (gpu_count > 0) "
                f"or all unset; got {self.gpu_count=}, {self.gpu_model=}, {self.price_micro_eur_per_gpu_hour=}"
            )
        return self

    @property
    def dtu_rate(self) -> Decimal:
        return dtu_rate(self.vcpu, self.memory_gib)


@dataclass(frozen=True, slots=True)
class Location:
    country: str
    continent: str

    @property
    def eu(self) -> bool:
        return self.country in EU_MEMBER_STATES


EU_MEMBER_STATES = frozenset({
    "Austria", "Belgium", "Bulgaria", "Croatia", "Cyprus", "Czechia", "Denmark", "Estonia", "Finland",
    "France", "Germany", "Greece", "Hungary", "Ireland", "Italy", "Latvia", "Lithuania", "Luxembourg",
    "Malta", "Netherlands", "Poland", "Portugal", "Romania", "Slovakia", "Slovenia", "Spain", "Sweden",
})  # fmt: skip

_EUROPE = "Europe"
_NA = "North America"
_ASIA = "Asia"
_OCEANIA = "Oceania"

# Country codes as used by RunPod's Region column (ISO 3166-1 alpha-2).
_COUNTRY_BY_ISO = {
    "AU": Location("Australia", _OCEANIA),
    "CA": Location("Canada", _NA),
    "CZ": Location("Czechia", _EUROPE),
    "DK": Location("Denmark", _EUROPE),
    "FR": Location("France", _EUROPE),
    "IN": Location("India", _ASIA),
    "IS": Location("Iceland", _EUROPE),
    "JP": Location("Japan", _ASIA),
    "NL": Location("Netherlands", _EUROPE),
    "NO": Location("Norway", _EUROPE),
    "RO": Location("Romania", _EUROPE),
    "SE": Location("Sweden", _EUROPE),
    "SG": Location("Singapore", _ASIA),
    "US": Location("United States", _NA),
}

_US = Location("United States", _NA)

# provider -> region code (exactly as in the catalog) -> where it is. Keyed by provider because
# the same code means different places at different providers (RunPod "CA" is Canada).
# Every non-empty region in shared/data/prices must be here; a unit test checks it.
REGION_LOCATIONS: dict[str, dict[str, Location]] = {
    "aws": {
        "eu-central-1": Location("Germany", _EUROPE),  # Frankfurt
        "eu-north-1": Location("Sweden", _EUROPE),  # Stockholm
        "eu-west-1": Location("Ireland", _EUROPE),  # Dublin
        "us-east-1": _US,  # N. Virginia
        "us-west-2": _US,  # Oregon
    },
    "azure": {
        "eastus": _US,  # Virginia
        "westus2": _US,  # Washington
    },
    "gcp": {
        "europe-north1": Location("Finland", _EUROPE),  # Hamina
        "europe-west1": Location("Belgium", _EUROPE),  # St. Ghislain
        "europe-west3": Location("Germany", _EUROPE),  # Frankfurt
        "europe-west4": Location("Netherlands", _EUROPE),  # Eemshaven
        "us-central1": _US,  # Iowa
        "us-east1": _US,  # South Carolina
    },
    "hyperstack": {
        "CANADA-1": Location("Canada", _NA),
        "NORWAY-1": Location("Norway", _EUROPE),
        "US-1": _US,
    },
    "lambda": {
        "asia-northeast-1": Location("Japan", _ASIA),
        "asia-northeast-2": Location("Japan", _ASIA),
        "asia-south-1": Location("India", _ASIA),
        "australia-east-1": Location("Australia", _OCEANIA),  # Sydney
        "europe-central-1": Location("Germany", _EUROPE),
        "europe-south-1": Location("Italy", _EUROPE),
        "me-west-1": Location("Israel", _ASIA),
        "us-east-1": _US,
        "us-east-2": _US,
        "us-east-3": _US,
        "us-midwest-1": _US,
        "us-south-1": _US,
        "us-south-2": _US,
        "us-south-3": _US,
        "us-west-1": _US,
        "us-west-2": _US,
        "us-west-3": _US,
    },
    "nebius": {
        "eu-north1": Location("Finland", _EUROPE),
        "eu-west1": Location("France", _EUROPE),  # Paris
        "us-central1": _US,  # Kansas City
    },
    "ovhcloud": {
        "BHS": Location("Canada", _NA),  # Beauharnois
        "FRA": Location("Germany", _EUROPE),  # Frankfurt
        "GRA": Location("France", _EUROPE),  # Gravelines
        "LON": Location("United Kingdom", _EUROPE),
        "WAW": Location("Poland", _EUROPE),  # Warsaw
    },
    "runpod": _COUNTRY_BY_ISO,  # RunPod's Region column holds the data centre's country code
    "scaleway": {
        "fr-par": Location("France", _EUROPE),
    },
    "seeweb": {
        "bg-sof1": Location("Bulgaria", _EUROPE),  # Sofia
        "ch-lug1": Location("Switzerland", _EUROPE),  # Lugano
        "it-fr2": Location("Italy", _EUROPE),  # Frosinone
        "it-mi2": Location("Italy", _EUROPE),  # Milan
    },
    "verda": {
        "FIN-01": Location("Finland", _EUROPE),
        "FIN-02": Location("Finland", _EUROPE),
        "FIN-03": Location("Finland", _EUROPE),
    },
}


def locate_region(provider: str, region: str) -> Location | None:
    """Where a provider's region is, or None if it is not in :data:`REGION_LOCATIONS`."""
    return REGION_LOCATIONS.get(provider, {}).get(region)


def vendor_name(provider: str, region: str) -> str:
    """``"<provider>-<region-slug>"`` in lower case, e.g. ``hyperstack-norway-1``."""
    slug = re.sub(r"[^a-z0-9]+", "-", region.lower()).strip("-")
    return f"{provider}-{slug}"


def catalog_files(data_dir: Path) -> list[Path]:
    """The price catalog CSVs under ``<data_dir>/prices``, sorted by name."""
    prices = Path(data_dir) / "prices"
    if not prices.is_dir():
        raise FileNotFoundError(
            f"data_dir: no price catalogs at {prices} (set {DATA_DIR_ENV} to the shared data directory)"
        )
    return sorted(prices.glob("*.csv"))


def provider_of(path: Path) -> str:
    """The provider a catalog file is for: its name up to the first underscore (``aws_v8_subset.csv``)."""
    return path.name.split("_", 1)[0].lower()


def load_catalog_offers(
    data_dir: Path | None = None, usd_to_eur: Decimal = USD_TO_EUR_DEFAULT
) -> list[CatalogOffer]:
    """Offers of every provider and region in ``<data_dir>/prices/*.csv``.

    Rows are skipped when they carry no price, no instance type (GCP TPU slices), no or an unknown
    region, or no usable vCPU/memory/GPU count. Where an instance type is listed in several zones
    of one region, the cheapest row is kept. Sorted by vendor, then node.
    """
    rate = _usd_to_eur(usd_to_eur)
    best: dict[tuple[str, str], CatalogOffer] = {}
    for path in catalog_files(default_data_dir() if data_dir is None else Path(data_dir)):
        for offer in _offers_in_file(path, rate):
            key = (offer.vendor, offer.node)
            kept = best.get(key)
            if kept is None or offer.price_micro_eur_per_dtu_hour < kept.price_micro_eur_per_dtu_hour:
                best[key] = offer
    return sorted(best.values(), key=lambda o: (o.vendor, o.node))


def seed_vendor_offers() -> list[CatalogOffer]:
    """The seed manifest's two Swedish vendors, ``elastx`` and ``safespring``, three node types each.

    Their prices are ILLUSTRATIVE: made up for the demo (elastx EUR 0.045, safespring EUR 0.038 per
    DTU-hour), not taken from either company's price list; hence ``illustrative=True``.
    """
    vendors = (
        ("elastx", "se-sto", Decimal("0.045")),
        ("safespring", "se-east", Decimal("0.038")),
    )
    sizes = ((2, 8), (4, 16), (8, 32))  # vCPU, GiB: one DTU per vCPU
    sweden = Location("Sweden", _EUROPE)
    return [
        CatalogOffer(
            vendor=vendor,
            node=f"std-{vcpu}c-{mem}g",
            provider=vendor,
            region=region,
            country=sweden.country,
            continent=sweden.continent,
            eu=sweden.eu,
            vcpu=Decimal(vcpu),
            memory_gib=Decimal(mem),
            gpu_count=0,
            gpu_model=None,
            arch="x86_64",
            price_micro_eur_per_dtu_hour=to_micro_eur(eur_per_dtu_hour),
            illustrative=True,
        )
        for vendor, region, eur_per_dtu_hour in vendors
        for vcpu, mem in sizes
    ]


def demo_offers(
    data_dir: Path | None = None,
    usd_to_eur: Decimal = USD_TO_EUR_DEFAULT,
    vendors: set[str] | None = None,
) -> list[CatalogOffer]:
    """Catalog offers plus the seed vendors' offers, optionally only those of ``vendors``.

    Raises ValueError naming any requested vendor that has no offers, so a typo does not silently
    start a demo without vendors.
    """
    offers = load_catalog_offers(data_dir, usd_to_eur) + seed_vendor_offers()
    if vendors is None:
        return offers
    unknown = set(vendors) - {o.vendor for o in offers}
    if unknown:
        raise ValueError(f"vendors: no offers for {sorted(unknown)}")
    return [o for o in offers if o.vendor in vendors]


def _usd_to_eur(value: Decimal | str | int) -> Decimal:
    if isinstance(value, float):  # binary floats carry rounding noise into money
        raise TypeError("usd_to_eur: pass a Decimal or a string, not a float")
    try:
        rate = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"usd_to_eur: {value!r} is not a number") from None
    if not rate.is_finite() or rate <= 0:
        raise ValueError(f"usd_to_eur: must be a positive number, got {value!r}")
    return rate


def _offers_in_file(path: Path, usd_to_eur: Decimal) -> Iterator[CatalogOffer]:
    provider = provider_of(path)
    for row in _rows(path):
        offer = _offer_from_row(provider, row, usd_to_eur)
        if offer is not None:
            yield offer


def _rows(path: Path) -> Iterable[dict[str, str]]:
    # column order differs between catalogs: always read by header name
    with path.open(newline="", encoding="utf-8") as f:
        yield from csv.DictReader(f)


def _decimal(text: str | None) -> Decimal | None:
    if text is None or not text.strip():
        return None
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def _offer_from_row(provider: str, row: dict[str, str], usd_to_eur: Decimal) -> CatalogOffer | None:
    node = (row.get("InstanceType") or "").strip()
    region = (row.get("Region") or "").strip()
    price_usd = _decimal(row.get("Price"))
    vcpu = _decimal(row.get("vCPUs"))
    memory = _decimal(row.get("MemoryGiB"))
    if not node or price_usd is None or price_usd <= 0 or vcpu is None or memory is None:
        return None
    if vcpu <= 0 or memory <= 0:
        return None
    location = locate_region(provider, region)
    if location is None:
        return None

    gpu_model = (row.get("AcceleratorName") or "").strip() or None
    gpu_count_d = _decimal(row.get("AcceleratorCount")) or Decimal(0)
    if gpu_model is None or gpu_count_d <= 0:
        gpu_model, gpu_count_d = None, Decimal(0)
    elif gpu_count_d != gpu_count_d.to_integral_value():
        return None  # a fractional GPU is not a GPU-hour we can price per whole device

    gpu_count = int(gpu_count_d)
    price_eur = price_usd * usd_to_eur
    return CatalogOffer(
        vendor=vendor_name(provider, region),
        node=node,
        provider=provider,
        region=region,
        country=location.country,
        continent=location.continent,
        eu=location.eu,
        vcpu=vcpu,
        memory_gib=memory,
        gpu_count=gpu_count,
        gpu_model=gpu_model,
        arch="arm64" if (row.get("Arch") or "").strip().lower().startswith("arm64") else "x86_64",
        price_micro_eur_per_dtu_hour=to_micro_eur(price_eur / dtu_rate(vcpu, memory)),
        price_micro_eur_per_gpu_hour=to_micro_eur(price_eur / gpu_count) if gpu_count else None,
    )
