"""The readers' side of a server sweep: a unit's study from the PACS, its patient's record from the
FHIR server, linked as ``crosscheck check`` links them.

`plugin.sweep.prepare.load_case` hands a unit whose ``source`` is a
`plugin.sweep.servers.ServerStudy` to `load_server_case`, in a reader process or a Ray task.

- **Clients**: made once per reader process from the unit's settings (and again only when a
  unit names other settings): a `connectors.dicom.web.DicomWebSource` and a
  `connectors.fhir.rest.FhirClient`, the latter on an event loop the process keeps (an async
  client's connections belong to the loop that opened them).
- **Study**: WADO-RS, as the service fetches one (`DicomWebSource.download_study`: headers
  and limits first, then each series streamed to files), into
  ``<cache>/<host>-<pid>/<StudyInstanceUID>/``, then read as files are; pixels decode lazily
  from there, so a reader keeps its last two studies on disk and deletes older ones.
- **Record**: `connectors.fhir.fetch.fetch_record`, as ``crosscheck check --patient`` and the
  service assemble it; kept per reader while its versions (the unit's ``record`` input) are
  unchanged, since a patient's studies come one after another.
- **Cache**: `download_cache`, a folder of the sweep's data folder
  (``<data-dir>/sweep-cache/<pid>-...``) removed when the sweep ends; what a sweep killed by
  ``kill -9`` left there (patients' images) is removed by the next sweep that finds its process gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import tempfile
from collections import OrderedDict
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from connectors import Strictness, link_cases, read_dicom
from connectors.dicom.web import DicomWebSource
from connectors.domain import Case, PatientRecord, Study
from connectors.errors import NoImagingFound
from connectors.fhir.fetch import fetch_record
from connectors.fhir.rest import FhirClient
from plugin.servers import ServerSettings
from plugin.sweep.servers import ServerStudy
from plugin.sweep.units import SweepUnit

__all__ = ["download_cache", "load_server_case", "load_server_study"]

logger = logging.getLogger(__name__)

_STUDIES_KEPT = 2  # on disk per reader: the study being scored, and the one before
_RECORDS_KEPT = 32

T = TypeVar("T")


class _Reader:
    """One reader process's clients and what it keeps of the studies and records it fetched."""

    def __init__(self, settings: ServerSettings) -> None:
        if settings.dicomweb_url is None:
            raise ValueError("a server sweep's unit names no DICOMweb PACS")
        self.settings = settings
        self.pacs: DicomWebSource = settings.dicomweb_source(settings.dicomweb_url)
        self.loop = asyncio.new_event_loop()
        self.fhir: FhirClient | None = settings.fhir_client() if settings.fhir_url is not None else None
        self.capabilities: dict[str, Any] | None = None
        self.studies: OrderedDict[tuple[str, str], tuple[Path, Study]] = OrderedDict()
        self.records: OrderedDict[tuple[str, str, str], PatientRecord] = OrderedDict()

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(work)

    def close(self) -> None:
        self.pacs.close()
        if self.fhir is not None:
            self.run(self.fhir.aclose())
        self.loop.close()
        for folder, _ in self.studies.values():
            shutil.rmtree(folder, ignore_errors=True)
        self.studies.clear()

    def study(self, unit: SweepUnit, source: ServerStudy, strictness: Strictness | str) -> Study:
        uid = unit.study_instance_uid
        key = (uid, unit.inputs.get("instances", ""))
        if key in self.studies:
            self.studies.move_to_end(key)
            return self.studies[key][1]
        for old in [k for k in self.studies if k[0] == uid]:  # another version of it: same folder
            shutil.rmtree(self.studies.pop(old)[0], ignore_errors=True)
        root = source.cache / f"{socket.gethostname()}-{os.getpid()}"
        folder = root / uid
        try:
            shutil.rmtree(folder, ignore_errors=True)  # what a failed fetch may have left
            self.pacs.download_study(uid, root)
            found = [s for s in read_dicom(folder, strictness=strictness) if s.study_instance_uid == uid]
            if not found:
                raise NoImagingFound(f"the PACS returned no readable instance of study {uid}")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        logger.debug("fetched study %s: %d instance(s)", uid, len(found[0].instances))
        self.studies[key] = (folder, found[0])
        while len(self.studies) > _STUDIES_KEPT:
            shutil.rmtree(self.studies.popitem(last=False)[1][0], ignore_errors=True)
        return found[0]

    def record(self, unit: SweepUnit, patient: str, strictness: Strictness | str) -> PatientRecord:
        if self.fhir is None:
            raise ValueError("a server sweep's unit names a Patient but its settings no FHIR server")
        key = (patient, unit.inputs.get("record", ""), Strictness.of(strictness).value)
        if key in self.records:
            self.records.move_to_end(key)
            return self.records[key]
        fhir = self.fhir
        if self.capabilities is None:
            self.capabilities = self.run(fhir.capabilities())
        fetched = self.run(fetch_record(fhir, patient, strictness=strictness, capabilities=self.capabilities))
        self.records[key] = fetched.record
        while len(self.records) > _RECORDS_KEPT:
            self.records.popitem(last=False)
        return fetched.record


_reader: _Reader | None = None


def _reader_for(settings: ServerSettings) -> _Reader:
    global _reader
    if _reader is None or _reader.settings != settings:
        if _reader is not None:
            _reader.close()
        _reader = _Reader(settings)
    return _reader


def _source(unit: SweepUnit) -> ServerStudy:
    if unit.source is None:
        raise ValueError(f"study {unit.study_instance_uid} is not from a server sweep")
    return unit.source


def load_server_study(unit: SweepUnit, strictness: Strictness | str = Strictness.WARN) -> Study:
    """The unit's study, fetched from the PACS (WADO-RS) into this reader's part of the cache."""
    source = _source(unit)
    return _reader_for(source.settings).study(unit, source, strictness)


def load_server_case(unit: SweepUnit, strictness: Strictness | str = Strictness.WARN) -> Case:
    """The unit's study linked to its patient's record (fetched from the FHIR server), as
    ``crosscheck check`` would link them; without a record when the unit names no Patient."""
    source = _source(unit)
    reader = _reader_for(source.settings)
    study = reader.study(unit, source, strictness).decoding_once()
    records = [] if source.fhir_patient is None else [reader.record(unit, source.fhir_patient, strictness)]
    return link_cases([study], records)[0]


@contextlib.contextmanager
def download_cache(data_dir: Path) -> Iterator[Path]:
    """A folder for a server sweep's downloads under ``data_dir`` (see the module docstring): removed
    when the block ends; the folders of sweeps whose process is gone removed first."""
    root = Path(data_dir) / "sweep-cache"
    root.mkdir(parents=True, exist_ok=True)
    for left in root.iterdir():
        pid = left.name.split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            logger.info("removing the download folder a stopped sweep left (%s)", left.name)
            shutil.rmtree(left, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=root))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
