"""DICOMweb (QIDO-RS, WADO-RS, STOW-RS) through dicomweb-client.

    pacs = DicomWebSource("http://pacs:8042/dicom-web", credentials=Credentials(username=..., password=...))
    refs = pacs.find_studies(patient_id="12345")
    meta = pacs.study_metadata(refs[0].study_instance_uid)      # headers only: no pixels moved
    files = pacs.download_study(refs[0].study_instance_uid, Path("cache"))

Metadata comes first: the header checks need no pixels, and the pixel, frame and
byte limits (`DicomLimits`) are checked on it before any pixel data is asked for,
so a decompression bomb or an absurd Rows x Columns is refused without downloading
it. Instances are then retrieved one at a time and streamed to disk part by part
(a multipart/related response is parsed as it arrives), never held whole in memory.

Errors from the server or the network become the `ServerError` subclasses of
`connectors.errors`, with the URL but not the query (QIDO queries carry patient ids).

`search_studies` pages through a QIDO-RS study search (``limit``/``offset``) with its
values percent-encoded only where a URL query needs it (`qido_query`): Orthanc does not
decode percent-encoded QIDO values, so a date range (``-``), a wildcard (``*``, ``?``)
or a UID list (``,``) must travel as written to match anything there.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

from connectors.auth import Credentials, requests_session
from connectors.dicom.limits import DicomLimits
from connectors.dicom.multipart import PartSink, split_parts
from connectors.errors import (
    NoImagingFound,
    ServerError,
    ServerTimeout,
    ServerUnreachable,
)
from connectors.http import RetryPolicy, Timeouts, error_for_status, outcome_issues, redact_url

__all__ = [
    "DICOM_MEDIA_TYPE",
    "QIDO_PAGE_SIZE",
    "DicomWebSource",
    "StudyRef",
    "metadata_dataset",
    "qido_query",
]

logger = logging.getLogger(__name__)

DICOM_MEDIA_TYPE = "application/dicom"
_ACCEPT_INSTANCE = f'multipart/related; type="{DICOM_MEDIA_TYPE}"; transfer-syntax=*'
_CHUNK = 1 << 20
#: Studies asked for per QIDO-RS request when paging (`DicomWebSource.search_studies`).
QIDO_PAGE_SIZE = 500
_MAX_QIDO_PAGES = 100_000  # a server that never ends its pages is broken: stop rather than loop
#: Characters a QIDO-RS value keeps unencoded: those RFC 3986 allows in a query but ``&``, ``=``,
#: ``+`` (they separate parameters, or mean a space) and ``%``.
_QIDO_SAFE = "-._~*?,:@/!$'()"


@dataclass(frozen=True)
class StudyRef:
    """One QIDO-RS study match."""

    study_instance_uid: str
    patient_id: str | None
    accession_number: str | None
    study_date: str | None
    modalities: tuple[str, ...]
    series: int | None
    instances: int | None

    #: The attributes a study search asks for besides StudyInstanceUID (QIDO-RS ``includefield``,
    #: C-FIND return keys): what `from_dataset` reads.
    KEYS: ClassVar[tuple[str, ...]] = (
        "PatientID",
        "AccessionNumber",
        "StudyDate",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    )

    @classmethod
    def from_dataset(cls, ds: Dataset) -> StudyRef:
        """From a QIDO-RS result or a C-FIND identifier."""
        modalities = ds.get("ModalitiesInStudy")
        if isinstance(modalities, str):
            modalities = [modalities] if modalities else []

        def number(keyword: str) -> int | None:
            value = ds.get(keyword)
            return int(value) if value not in (None, "") else None

        return cls(
            study_instance_uid=str(ds.get("StudyInstanceUID", "")),
            patient_id=str(ds.PatientID) if ds.get("PatientID") else None,
            accession_number=str(ds.AccessionNumber) if ds.get("AccessionNumber") else None,
            study_date=str(ds.StudyDate) if ds.get("StudyDate") else None,
            modalities=tuple(str(m) for m in modalities or ()),
            series=number("NumberOfStudyRelatedSeries"),
            instances=number("NumberOfStudyRelatedInstances"),
        )


def qido_query(params: Mapping[str, str | int | Sequence[str]]) -> str:
    """A QIDO-RS query string, each value percent-encoded only where a URL query needs it.

    Orthanc does not decode percent-encoded QIDO values: ``StudyDate=20240101%2D20241231``
    matches nothing there, ``StudyDate=20240101-20241231`` matches the range. A value with a
    space, ``&``, ``=``, ``+``, ``%`` or a non-ASCII character must be encoded for any server,
    and so cannot match on Orthanc.
    """
    pairs = []
    for key, value in params.items():
        for v in [value] if isinstance(value, str | int) else value:
            pairs.append(f"{quote(key, safe='')}={quote(str(v), safe=_QIDO_SAFE)}")
    return "&".join(pairs)


def metadata_dataset(item: dict[str, Any]) -> Dataset:
    """A DICOM JSON metadata item as a pydicom Dataset (bulk data left out)."""
    return Dataset.from_json(item, bulk_data_uri_handler=lambda *_: b"")


class DicomWebSource:
    """A PACS reached over DICOMweb.

    WADO-RS with ``transfer-syntax=*`` returns the instance as stored, file meta
    included (``preserves_file_meta``).
    """

    preserves_file_meta = True

    def __init__(
        self,
        url: str,
        *,
        credentials: Credentials | None = None,
        timeouts: Timeouts = Timeouts(),
        retry: RetryPolicy = RetryPolicy(),
        limits: DicomLimits = DicomLimits(),
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"DICOMweb URL must start with http:// or https://, not {redact_url(url)!r}")
        self.url = url.rstrip("/")
        self.limits = limits
        self.timeouts = timeouts
        self.requests = 0
        session = requests_session(credentials)
        session.hooks["response"].append(self._count)
        self._session = session
        self._client = DICOMwebClient(self.url, session=session, timeout=(timeouts.connect, timeouts.read))
        self._client.set_http_retry_params(
            retry=retry.attempts > 1,
            max_attempts=retry.attempts,
            wait_exponential_multiplier=max(int(retry.backoff * 1000), 1),
        )

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> DicomWebSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- QIDO-RS ---------------------------------------------------------------------------------

    def find_studies(
        self,
        *,
        patient_id: str | None = None,
        accession_number: str | None = None,
        study_instance_uid: str | None = None,
        date_from: date | None = None,
        date_to: date | None = None,
        limit: int | None = None,
    ) -> list[StudyRef]:
        """QIDO-RS ``/studies`` by any of patient id, accession number, UID and date range."""
        filters: dict[str, str] = {}
        if patient_id is not None:
            filters["PatientID"] = patient_id
        if accession_number is not None:
            filters["AccessionNumber"] = accession_number
        if study_instance_uid is not None:
            filters["StudyInstanceUID"] = study_instance_uid
        if date_from is not None or date_to is not None:
            low = date_from.strftime("%Y%m%d") if date_from else ""
            high = date_to.strftime("%Y%m%d") if date_to else ""
            filters["StudyDate"] = f"{low}-{high}"
        if not filters:
            raise ValueError(
                "a study search needs a patient id, accession number, StudyInstanceUID or date range"
            )
        found = self._call(
            "QIDO-RS study search",
            lambda: self._client.search_for_studies(
                search_filters=filters,
                fields=StudyRef.KEYS,
                limit=limit,
                # a UID matches at most one study: no need for the extra request that finds the end
                get_remaining=limit is None and study_instance_uid is None,
            ),
        )
        return [StudyRef.from_dataset(metadata_dataset(item)) for item in found]

    def search_studies(
        self, filters: Mapping[str, str], *, page_size: int = QIDO_PAGE_SIZE
    ) -> Iterator[list[StudyRef]]:
        """Pages of QIDO-RS ``/studies`` matches of every filter (DICOM keyword -> value, e.g.
        ``{"StudyDate": "20240101-20240131", "PatientID": "12345"}``; none: every study), ``page_size``
        a request.

        Pages follow each other by ``offset`` until one comes back empty (a server may cap a page
        below ``limit``, so a short page is not the end) or brings no study not seen before (a
        server that ignores ``offset``). A study is in at most one page. Values are encoded with
        `qido_query`. Orthanc (1.10) pages a search with ``ModalitiesInStudy`` wrongly: it matches
        the modality on the series after cutting the page, so match that one on the results.
        """
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        seen: set[str] = set()
        for page in range(_MAX_QIDO_PAGES):
            params: dict[str, str | int | Sequence[str]] = {
                **filters,
                "includefield": list(StudyRef.KEYS),
                "limit": page_size,
                "offset": page * page_size,
            }
            items = self._qido("/studies", params, "QIDO-RS study search")
            refs = [StudyRef.from_dataset(metadata_dataset(item)) for item in items]
            new = [r for r in refs if r.study_instance_uid and r.study_instance_uid not in seen]
            if not new:
                return
            seen.update(r.study_instance_uid for r in new)
            yield new
        raise ServerError(
            f"QIDO-RS study search: the PACS at {self.url} returned more than {_MAX_QIDO_PAGES} pages; "
            "stopped",
            url=f"{self.url}/studies",
        )

    def _qido(self, path: str, params: Mapping[str, str | int | Sequence[str]], what: str) -> list[Any]:
        """GET a QIDO-RS resource with a `qido_query` query string; the DICOM JSON array."""
        url = f"{self.url}{path}"
        try:
            response = self._session.get(
                f"{url}?{qido_query(params)}",
                headers={"Accept": "application/dicom+json"},
                timeout=(self.timeouts.connect, self.timeouts.read),
            )
        except requests.RequestException as exc:
            raise _transport_error(exc, what, url) from None
        if response.status_code >= 400:
            raise _status_error(response, what)
        if response.status_code == 204 or not response.content:
            return []
        try:
            body = response.json()
        except ValueError:
            raise ServerError(f"{what}: the PACS answered with a body that is not JSON", url=url) from None
        if isinstance(body, dict):  # some servers send a lone match as an object
            body = [body]
        if not isinstance(body, list):
            raise ServerError(f"{what}: the PACS answered with JSON that is not a list of matches", url=url)
        return body

    def find_series(self, study_instance_uid: str) -> list[Dataset]:
        found = self._call(
            "QIDO-RS series search",
            lambda: self._client.search_for_series(study_instance_uid, get_remaining=True),
        )
        return [metadata_dataset(item) for item in found]

    def find_instances(
        self, study_instance_uid: str, series_instance_uid: str | None = None
    ) -> list[Dataset]:
        found = self._call(
            "QIDO-RS instance search",
            lambda: self._client.search_for_instances(
                study_instance_uid, series_instance_uid, get_remaining=True
            ),
        )
        return [metadata_dataset(item) for item in found]

    # -- WADO-RS ---------------------------------------------------------------------------------

    def study_metadata(self, study_instance_uid: str) -> list[Dataset]:
        """Every instance header of the study (WADO-RS metadata); no pixel data moves.

        `NoImagingFound` when the PACS has no such study.
        """
        try:
            items = self._call(
                "WADO-RS study metadata", lambda: self._client.retrieve_study_metadata(study_instance_uid)
            )
        except ServerError as exc:
            if exc.status == 404:
                raise NoImagingFound(f"the PACS at {self.url} has no study {study_instance_uid}") from None
            raise
        if not items:
            raise NoImagingFound(f"the PACS at {self.url} has no instances in study {study_instance_uid}")
        return [metadata_dataset(item) for item in items]

    def check_limits(self, metadata: Sequence[Dataset], study_instance_uid: str) -> int:
        """Raise `PixelDataTooLarge` when the headers promise more than the limits allow; return the bytes."""
        total = 0
        for ds in metadata:
            rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
            if not rows or not cols:
                continue
            total += self.limits.check_instance(
                rows=rows,
                columns=cols,
                frames=int(ds.get("NumberOfFrames", 1) or 1),
                samples_per_pixel=int(ds.get("SamplesPerPixel", 1) or 1),
                bits_allocated=int(ds.get("BitsAllocated", 16) or 16),
                source=f"instance {ds.get('SOPInstanceUID', '?')}",
            )
        self.limits.check_study(total, study_instance_uid=study_instance_uid)
        return total

    def download_study(
        self, study_instance_uid: str, dest: Path, *, metadata: Sequence[Dataset] | None = None
    ) -> list[Path]:
        """Write every instance of the study under ``dest/<StudyInstanceUID>/``; their paths.

        Headers are read (or taken from ``metadata``) and checked against the
        limits first; then each series is retrieved in one request, its
        multipart response streamed part by part into one file per instance.
        """
        metadata = list(metadata) if metadata is not None else self.study_metadata(study_instance_uid)
        self.check_limits(metadata, study_instance_uid)
        folder = dest / _safe(study_instance_uid)
        folder.mkdir(parents=True, exist_ok=True)
        expected: dict[str, set[str]] = {}
        for ds in metadata:
            series_uid, sop_uid = str(ds.get("SeriesInstanceUID", "")), str(ds.get("SOPInstanceUID", ""))
            if series_uid and sop_uid:
                expected.setdefault(series_uid, set()).add(sop_uid)
        paths: list[Path] = []
        for series_uid, sops in expected.items():
            url = f"{self.url}/studies/{study_instance_uid}/series/{series_uid}"
            got = self._stream_parts(url, folder, "WADO-RS series retrieval")
            missing = sops - set(got)
            if missing:
                raise ServerError(
                    f"WADO-RS: series {series_uid} came without {len(missing)} of its {len(sops)} instances",
                    url=redact_url(url),
                )
            paths.extend(got[sop] for sop in sorted(sops))
        return paths

    def download_instance(self, study_uid: str, series_uid: str, sop_uid: str, path: Path) -> Path:
        """Stream one instance (as stored, any transfer syntax) into ``path``."""
        url = f"{self.url}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
        got = self._stream_parts(url, path.parent, "WADO-RS instance retrieval")
        if sop_uid not in got:
            raise ServerError(f"WADO-RS: the PACS sent no instance {sop_uid}", url=redact_url(url))
        return got[sop_uid].replace(path) if got[sop_uid] != path else path

    def _stream_parts(self, url: str, folder: Path, what: str) -> dict[str, Path]:
        """GET ``url`` as multipart/related DICOM; each part to ``folder/<SOPInstanceUID>.dcm``."""
        try:
            response = self._session.get(
                url,
                headers={"Accept": _ACCEPT_INSTANCE},
                stream=True,
                timeout=(self.timeouts.connect, self.timeouts.read),
            )
        except requests.RequestException as exc:
            raise _transport_error(exc, what, url) from None
        with response:
            if response.status_code >= 400:
                raise _status_error(response, what)
            writer = _PartWriter(folder)
            try:
                split_parts(response.iter_content(_CHUNK), response.headers.get("Content-Type", ""), writer)
            except requests.RequestException as exc:
                writer.discard()
                raise _transport_error(exc, what, url) from None
            except Exception:
                writer.discard()
                raise
        return writer.finish(what, url)

    def frames(
        self,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        numbers: Sequence[int],
        *,
        media_type: str = "application/octet-stream",
    ) -> list[bytes]:
        """WADO-RS frames (1-based numbers); Orthanc needs the media type explicitly."""
        frames: list[bytes] = self._call(
            "WADO-RS frame retrieval",
            lambda: self._client.retrieve_instance_frames(
                study_uid, series_uid, sop_uid, frame_numbers=list(numbers), media_types=((media_type, "*"),)
            ),
        )
        return frames

    # -- STOW-RS ---------------------------------------------------------------------------------

    def store(self, files: Sequence[Path], *, batch: int = 16) -> int:
        """STOW-RS the files, ``batch`` instances a request; the number stored."""
        stored = 0
        for start in range(0, len(files), batch):
            datasets = [pydicom.dcmread(f) for f in files[start : start + batch]]
            stored += self.store_datasets(datasets, batch=batch)
        return stored

    def store_datasets(self, datasets: Sequence[Dataset], *, batch: int = 16) -> int:
        """STOW-RS datasets held in memory (e.g. a Structured Report just made), ``batch`` a request.

        The number stored; a `ServerError` naming the failure reasons when the PACS
        refuses any of them (its ``FailedSOPSequence``).
        """
        stored = 0
        for start in range(0, len(datasets), batch):
            chunk = list(datasets[start : start + batch])
            response = self._call("STOW-RS", lambda ds=chunk: self._client.store_instances(ds))
            failed = response.get("FailedSOPSequence") if response is not None else None
            if failed:
                reasons = sorted({str(item.get("FailureReason", "?")) for item in failed})
                raise ServerError(
                    f"STOW-RS: the PACS at {self.url} refused {len(failed)} instance(s) "
                    f"(failure reasons {', '.join(reasons)})",
                    url=f"{self.url}/studies",
                )
            stored += len(chunk)
        return stored

    # -- helpers ---------------------------------------------------------------------------------

    def _count(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.requests += 1

    def _call(self, what: str, fn: Any) -> Any:
        try:
            return fn()
        except requests.HTTPError as exc:
            if exc.response is None:
                raise ServerError(
                    f"{what} failed at {self.url}: {exc.__class__.__name__}", url=self.url
                ) from None
            raise _status_error(exc.response, what) from None
        except requests.RequestException as exc:
            raise _transport_error(exc, what, self.url) from None
        except Exception as exc:  # dicomweb-client's retry wrapper re-raises the last error as RetryError
            inner = getattr(getattr(exc, "last_attempt", None), "value", None)
            if isinstance(inner, requests.HTTPError) and inner.response is not None:
                raise _status_error(inner.response, what, retried=True) from None
            if isinstance(inner, requests.RequestException):
                raise _transport_error(inner, what, self.url) from None
            raise


class _PartWriter(PartSink):
    """Writes each multipart part to a temporary file, then names it after its SOPInstanceUID."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.current: Any = None
        self.parts: list[Path] = []

    def begin(self) -> None:
        self.end()
        self.current = tempfile.NamedTemporaryFile(
            dir=self.folder, prefix=".part-", suffix=".dcm", delete=False
        )

    def write(self, data: bytes) -> None:
        if self.current is None:  # a plain (non-multipart) body is one part
            self.begin()
        self.current.write(data)

    def end(self) -> None:
        if self.current is not None:
            self.current.close()
            self.parts.append(Path(self.current.name))
            self.current = None

    def discard(self) -> None:
        self.end()
        for part in self.parts:
            part.unlink(missing_ok=True)
        self.parts = []

    def finish(self, what: str, url: str) -> dict[str, Path]:
        self.end()
        named: dict[str, Path] = {}
        try:
            for part in self.parts:
                if part.stat().st_size == 0:
                    raise ServerError(f"{what}: the PACS sent an empty part", url=redact_url(url))
                try:
                    sop_uid = str(
                        pydicom.dcmread(
                            part, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]
                        ).SOPInstanceUID
                    )
                except Exception:  # pydicom raises several kinds for a broken file
                    raise ServerError(
                        f"{what}: the PACS sent a part that is not DICOM", url=redact_url(url)
                    ) from None
                target = self.folder / f"{_safe(sop_uid)}.dcm"
                os.replace(part, target)
                named[sop_uid] = target
        finally:
            for part in self.parts:
                part.unlink(missing_ok=True)
        return named


def _status_error(response: requests.Response, what: str, *, retried: bool = False) -> ServerError:
    try:
        body = response.json()
    except ValueError:
        body = None
    return error_for_status(
        response.status_code,
        url=redact_url(response.url),
        what=what,
        issues=outcome_issues(body),
        retried=int(retried),
    )


def _transport_error(exc: requests.RequestException, what: str, url: str) -> ServerError:
    if isinstance(exc, requests.Timeout):
        return ServerTimeout(
            f"{what}: the PACS did not answer within the timeout at {redact_url(url)}", url=redact_url(url)
        )
    return ServerUnreachable(
        f"{what}: the PACS is unreachable at {redact_url(url)} ({exc.__class__.__name__})",
        url=redact_url(url),
    )


def _safe(uid: str) -> str:
    cleaned = "".join(c for c in uid if c.isdigit() or c == ".")
    if not cleaned or cleaned != uid:
        raise ValueError(f"{uid!r} is not a DICOM UID")
    return cleaned
