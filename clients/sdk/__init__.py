"""The consumer SDK: submit job manifests to the exchange and read its state (see `client`)."""

from clients.sdk.client import (
    CancelOutcome,
    Exchange,
    ExchangeError,
    ManifestFileError,
    Outcome,
    format_eur,
    load_manifests,
)

__all__ = ["CancelOutcome", "Exchange", "ExchangeError", "ManifestFileError", "Outcome", "format_eur", "load_manifests"]
