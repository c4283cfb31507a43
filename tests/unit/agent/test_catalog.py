"""Demo vendor offers from the shared price catalogs (clients/agent/catalog.py)."""

import csv
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from clients.agent.catalog import (
    USD_TO_EUR_DEFAULT,
    CatalogOffer,
    catalog_files,
    default_data_dir,
    demo_offers,
    dtu_rate,
    load_catalog_offers,
    locate_region,
    provider_of,
    seed_vendor_offers,
)

DATA_DIR = default_data_dir()
needs_data = pytest.mark.skipif(
    not (DATA_DIR / "prices").is_dir(),
    reason=f"no price catalogs at {DATA_DIR / 'prices'} (set STRONGMOOSE_DATA)",
)


@pytest.fixture(scope="module")
def offers() -> list[CatalogOffer]:
    return load_catalog_offers(DATA_DIR)


def _by(offers: list[CatalogOffer], vendor: str, node: str) -> CatalogOffer:
    [offer] = [o for o in offers if o.vendor == vendor and o.node == node]
    return offer


def _file_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_dtu_rate_is_the_larger_of_vcpus_and_a_quarter_of_the_memory():
    assert dtu_rate(Decimal(8), Decimal(32)) == 8
    assert dtu_rate(Decimal(2), Decimal(16)) == 4
    assert dtu_rate(Decimal("1.0"), Decimal("0.5")) == 1


@needs_data
def test_every_catalog_file_contributes_offers(offers):
    files = catalog_files(DATA_DIR)
    assert len(files) >= 11
    providers = {o.provider for o in offers}
    assert providers == {provider_of(f) for f in files}


@needs_data
def test_every_price_is_a_positive_integer_of_micro_euros(offers):
    for o in offers:
        assert type(o.price_micro_eur_per_dtu_hour) is int and o.price_micro_eur_per_dtu_hour > 0, o
        if o.gpu_count:
            assert type(o.price_micro_eur_per_gpu_hour) is int and o.price_micro_eur_per_gpu_hour > 0, o
        else:
            assert o.price_micro_eur_per_gpu_hour is None, o


@needs_data
def test_one_offer_per_vendor_and_instance_type(offers):
    keys = [(o.vendor, o.node) for o in offers]
    assert len(keys) == len(set(keys))


@needs_data
def test_dtu_price_of_an_aws_row_equals_a_hand_computation(offers):
    # aws_v8_subset.csv: m8g.2xlarge, 8 vCPU, 32 GiB, 0.38152 USD/h in eu-north-1 (all three zones)
    rows = [
        r
        for r in _file_rows(DATA_DIR / "prices" / "aws_v8_subset.csv")
        if r["InstanceType"] == "m8g.2xlarge" and r["Region"] == "eu-north-1"
    ]
    assert {(r["vCPUs"], r["MemoryGiB"], r["Price"]) for r in rows} == {("8.0", "32.0", "0.38152")}

    # 0.38152 USD * 0.92 EUR/USD / max(8, 32/4) DTU = 0.0438748 EUR = 43874.8 micro-euros -> 43875
    expected = (Decimal("0.38152") * Decimal("0.92") / Decimal(8) * 1_000_000).quantize(
        Decimal(1), rounding=ROUND_HALF_UP
    )
    assert expected == 43875
    offer = _by(offers, "aws-eu-north-1", "m8g.2xlarge")
    assert offer.price_micro_eur_per_dtu_hour == expected
    assert offer.region == "eu-north-1" and offer.country == "Sweden" and offer.eu


@needs_data
def test_gpu_hour_price_rounds_half_up(offers):
    # g6e.12xlarge in eu-north-1: 11.12975 USD/h for 4 L40S -> 2.5598425 EUR per GPU-hour, exactly half a micro-euro
    offer = _by(offers, "aws-eu-north-1", "g6e.12xlarge")
    assert offer.price_micro_eur_per_gpu_hour == 2_559_843
    # DTU price still from max(48 vCPU, 384 GiB / 4) = 96 DTU: 0.10666010416.. EUR
    assert offer.price_micro_eur_per_dtu_hour == 106_660


@needs_data
def test_the_conversion_rate_is_applied():
    offer = _by(load_catalog_offers(DATA_DIR, usd_to_eur=Decimal(1)), "aws-eu-north-1", "m8g.2xlarge")
    assert offer.price_micro_eur_per_dtu_hour == 47_690  # 0.38152 / 8 = 0.04769 EUR


def test_a_float_conversion_rate_is_refused():
    with pytest.raises(TypeError, match="usd_to_eur"):
        load_catalog_offers(DATA_DIR, usd_to_eur=0.92)  # type: ignore[arg-type]


@needs_data
def test_several_zones_keep_the_cheapest_row(offers):
    # scaleway RENDER-S is listed in fr-par-1 and fr-par-2 of region fr-par
    assert len([o for o in offers if o.vendor == "scaleway-fr-par" and o.node == "RENDER-S"]) == 1


@needs_data
def test_an_arm64_row_has_arch_arm64(offers):
    assert _by(offers, "aws-eu-north-1", "m8g.2xlarge").arch == "arm64"
    assert _by(offers, "aws-eu-central-1", "a1.2xlarge").arch == "arm64"
    assert _by(offers, "aws-us-east-1", "m5a.xlarge").arch == "x86_64"
    assert {o.arch for o in offers} == {"x86_64", "arm64"}


@needs_data
def test_gpu_rows_carry_model_and_count(offers):
    g6e = _by(offers, "aws-eu-north-1", "g6e.12xlarge")
    assert (g6e.gpu_model, g6e.gpu_count) == ("L40S", 4)
    runpod = _by(offers, "runpod-se", "2x_A100-80GB_SECURE")
    assert (runpod.gpu_model, runpod.gpu_count) == ("A100-80GB", 2)
    assert runpod.country == "Sweden"
    cpu_only = _by(offers, "nebius-eu-north1", "cpu-d3_4vcpu-16gb")  # AcceleratorCount 0
    assert (cpu_only.gpu_model, cpu_only.gpu_count) == (None, 0)
    assert sum(1 for o in offers if o.gpu_count) > 100


@needs_data
def test_rows_without_price_instance_type_or_region_are_skipped(offers):
    nodes = {o.node for o in offers}
    assert not any(n.startswith("mac") for n in nodes)  # AWS mac*.metal have no price
    assert "" not in nodes  # GCP TPU rows have no instance type
    assert all(o.region for o in offers)  # some Seeweb GPU rows have no region


@needs_data
def test_every_region_in_the_catalogs_is_mapped():
    unmapped = {
        (provider_of(path), row["Region"])
        for path in catalog_files(DATA_DIR)
        for row in _file_rows(path)
        if row["Region"] and locate_region(provider_of(path), row["Region"]) is None
    }
    assert unmapped == set()


@needs_data
def test_one_vendor_per_provider_and_region(offers):
    vendors = {o.vendor: (o.provider, o.region) for o in offers}
    assert len(set(vendors.values())) == len(vendors)
    assert {"aws-eu-north-1", "nebius-eu-north1", "runpod-se", "hyperstack-norway-1", "ovhcloud-gra"} <= set(
        vendors
    )
    assert all(v == v.lower() for v in vendors)


def test_the_seed_vendors_are_swedish_and_illustrative():
    seeds = seed_vendor_offers()
    assert {o.vendor for o in seeds} == {"elastx", "safespring"}
    for vendor, region, price in (("elastx", "se-sto", 45_000), ("safespring", "se-east", 38_000)):
        mine = [o for o in seeds if o.vendor == vendor]
        assert len(mine) == 3
        assert {(o.region, o.country, o.continent, o.eu, o.illustrative) for o in mine} == {
            (region, "Sweden", "Europe", True, True)
        }
        assert {o.price_micro_eur_per_dtu_hour for o in mine} == {price}


@needs_data
def test_demo_offers_are_the_catalog_plus_the_seed_vendors(offers):
    everything = demo_offers(DATA_DIR, USD_TO_EUR_DEFAULT)
    assert len(everything) == len(offers) + len(seed_vendor_offers())
    assert not any(o.illustrative for o in offers)

    picked = demo_offers(DATA_DIR, USD_TO_EUR_DEFAULT, vendors={"elastx", "safespring", "aws-eu-north-1"})
    assert {o.vendor for o in picked} == {"elastx", "safespring", "aws-eu-north-1"}


@needs_data
def test_demo_offers_name_an_unknown_vendor():
    with pytest.raises(ValueError, match="elasticx"):
        demo_offers(DATA_DIR, USD_TO_EUR_DEFAULT, vendors={"elasticx"})


@needs_data
def test_eu_flag_follows_eu_membership_not_geography(offers):
    def eu_of(country: str) -> set[bool]:
        return {o.eu for o in offers if o.country == country}

    assert eu_of("Sweden") == {True}
    assert eu_of("Norway") == {False}  # hyperstack-norway-1, runpod-no
    assert eu_of("Switzerland") == {False}  # seeweb-ch-lug1
    assert eu_of("United Kingdom") == {False}
    assert eu_of("United States") == {False}
    assert _by(offers, "seeweb-ch-lug1", "eCS1").continent == "Europe"


def test_an_offer_with_a_gpu_count_but_no_model_is_refused():
    with pytest.raises(ValueError, match="gpu_count"):
        CatalogOffer(
            vendor="x", node="n", provider="x", region="r", country="Sweden", continent="Europe", eu=True,
            vcpu=Decimal(1), memory_gib=Decimal(4), gpu_count=1, gpu_model=None, arch="x86_64",
            price_micro_eur_per_dtu_hour=1, price_micro_eur_per_gpu_hour=1,
        )  # fmt: skip
