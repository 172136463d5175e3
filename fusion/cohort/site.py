"""The simulated hospital: one organisation, its DICOM UID root and its imaging devices.

Every name here is fictional (vendors, models, the hospital); none is a real
trademark. The UID root sits under the free UID service root
``1.2.826.0.1.3680043`` with a made-up sub-arc, short enough that the UIDs the
cohort generates (root + ``.`` + 20 digits, see `fusion.cohort.draw`) stay far
below the 64-character limit even with per-instance suffixes.
"""

from __future__ import annotations

import logging
from datetime import timedelta, timezone

import numpy as np

from connectors.domain import SiteDevice
from fusion.cohort.scenario import SimSite

__all__ = ["SITE_TIMEZONE", "default_site"]

logger = logging.getLogger(__name__)

SITE_TIMEZONE = timezone(timedelta(hours=1))
"""The site's wall-clock offset; every time in the cohort is written with it."""

_UID_ROOT = "1.2.826.0.1.3680043.10.4711"

# (manufacturer, model, modality, station prefix, software versions)
_DEVICE_MODELS: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    ("Acme Medical Systems", "Radiant DR 700", "DX", "DXROOM", ("RDR 4.2.1", "Firmware 11.03")),
    ("Borealis Imaging", "ClearView DRX-S", "DX", "DXROOM", ("CV 7.0.12",)),
    ("Acme Medical Systems", "Radiant DR 500", "DX", "DXROOM", ("RDR 3.9.8", "Firmware 10.7")),
    ("Borealis Imaging", "Helix 128", "CT", "CTSCAN", ("HX 22.1.4",)),
    ("Nordlicht Medizintechnik", "Tomara Flash 64", "CT", "CTSCAN", ("TF 5.2.0", "VB20")),
    ("Nordlicht Medizintechnik", "Magnara 1.5T", "MR", "MRSCAN", ("MG 11.3.0",)),
    ("Acme Medical Systems", "Resonix 3T", "MR", "MRSCAN", ("RX 27.0 R02",)),
)


def default_site(seed: int = 0) -> SimSite:
    """The cohort's hospital; ``seed`` draws the device serial numbers.

    The organisation, UID root, identifier systems and device models are fixed;
    only the serial numbers change with the seed, so two cohorts from different
    seeds look like two installations of the same site.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x5173,)))
    devices: list[SiteDevice] = []
    counters: dict[str, int] = {}
    for manufacturer, model, modality, station, versions in _DEVICE_MODELS:
        counters[modality] = counters.get(modality, 0) + 1
        prefix = "".join(word[0] for word in manufacturer.split()[:2]).upper()
        serial = f"{prefix}{int(rng.integers(10_000_000, 99_999_999))}"
        devices.append(
            SiteDevice(
                manufacturer=manufacturer,
                model=model,
                serial_number=serial,
                modality=modality,
                station_name=f"{station}{counters[modality]:02d}",
                software_versions=versions,
            )
        )
    site = SimSite(
        organization_id="org-st-aldric",
        name="St Aldric General Hospital",
        uid_root=_UID_ROOT,
        mrn_system="urn:oid:1.2.826.0.1.3680043.10.4711.100.1",
        accession_system="urn:oid:1.2.826.0.1.3680043.10.4711.100.2",
        devices=tuple(devices),
    )
    logger.debug("site built with %d devices", len(devices))
    return site
