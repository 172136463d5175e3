"""DIMSE with pynetdicom: C-ECHO, C-FIND (study, series), C-GET, and C-MOVE to our own storage SCP.

    pacs = DimseSource(DimsePeer.parse("pacs.example.org:104:PACS"), calling_ae="CROSSCHECK")
    pacs.echo()
    refs = pacs.find_studies(patient_id="12345")
    files = pacs.get_study(refs[0].study_instance_uid, Path("cache"))          # C-GET
    files = pacs.move_study(refs[0].study_instance_uid, Path("cache"))         # C-MOVE to our SCP

C-MOVE needs the PACS to know our AE title with the host and port of our storage
SCP (``storage_port``); C-GET needs nothing on the PACS side but the SCP role. Each
received instance is written to disk as it arrives (pynetdicom's chunked receive),
and the study is cut off once it exceeds `DicomLimits.max_bytes_per_study` on the
wire. Refusals and failures become `connectors.errors` exceptions naming the peer.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, build_role, evt
from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RJ

from connectors.dicom.limits import DicomLimits
from connectors.dicom.web import StudyRef
from connectors.errors import (
    AuthenticationFailed,
    NoImagingFound,
    PixelDataTooLarge,
    ServerError,
    ServerFailed,
    ServerUnreachable,
)

__all__ = ["STORAGE_CLASSES", "TRANSFER_SYNTAXES", "DimsePeer", "DimseSource"]

logger = logging.getLogger(__name__)

#: Storage SOP classes we accept on C-GET / C-MOVE (a presentation context each; the limit is 128).
STORAGE_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.1",  # CR
    "1.2.840.10008.5.1.4.1.1.1.1",  # DX for presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # DX for processing
    "1.2.840.10008.5.1.4.1.1.1.2",  # MG for presentation
    "1.2.840.10008.5.1.4.1.1.1.2.1",  # MG for processing
    "1.2.840.10008.5.1.4.1.1.2",  # CT
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT
    "1.2.840.10008.5.1.4.1.1.4",  # MR
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR
    "1.2.840.10008.5.1.4.1.1.6.1",  # US
    "1.2.840.10008.5.1.4.1.1.3.1",  # US multi-frame
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame grayscale byte SC
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame grayscale word SC
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame true colour SC
    "1.2.840.10008.5.1.4.1.1.12.1",  # XA
    "1.2.840.10008.5.1.4.1.1.12.2",  # RF
    "1.2.840.10008.5.1.4.1.1.20",  # NM
    "1.2.840.10008.5.1.4.1.1.128",  # PET
    "1.2.840.10008.5.1.4.1.1.481.1",  # RT Image
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
)

#: Transfer syntaxes we accept, so the PACS sends what it stores without transcoding.
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
)

# SOP classes by UID (pynetdicom's named constants are generated at run time, unseen by type checkers).
Verification = "1.2.840.10008.1.1"
StudyRootQueryRetrieveInformationModelFind = "1.2.840.10008.5.1.4.1.2.2.1"
StudyRootQueryRetrieveInformationModelMove = "1.2.840.10008.5.1.4.1.2.2.2"
StudyRootQueryRetrieveInformationModelGet = "1.2.840.10008.5.1.4.1.2.2.3"


@dataclass(frozen=True)
class DimsePeer:
    """A DICOM application entity: host, port, AE title."""

    host: str
    port: int
    ae_title: str

    @classmethod
    def parse(cls, text: str) -> DimsePeer:
        """``HOST:PORT:AET``."""
        parts = text.rsplit(":", 2)
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"a DIMSE peer is HOST:PORT:AET, not {text!r}")
        host, port, aet = parts
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"DIMSE port must be a number from 1 to 65535, not {port!r}")
        _check_ae_title(aet)
        return cls(host=host, port=int(port), ae_title=aet)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class DimseSource:
    """A PACS reached over DIMSE.

    DIMSE transfers datasets without their file meta information; the files we
    write carry our receiver's, so ``preserves_file_meta`` is False and the case
    assembly treats the implementation class UID and version name as unknown.
    """

    preserves_file_meta = False

    def __init__(
        self,
        peer: DimsePeer,
        *,
        calling_ae: str = "CROSSCHECK",
        storage_port: int | None = None,
        timeout: float = 30.0,
        limits: DicomLimits = DicomLimits(),
        retrieve: str = "get",
    ) -> None:
        _check_ae_title(calling_ae)
        if retrieve not in ("get", "move"):
            raise ValueError(f"retrieve must be 'get' (C-GET) or 'move' (C-MOVE), not {retrieve!r}")
        if retrieve == "move" and storage_port is None:
            raise ValueError(
                "C-MOVE needs storage_port: the port our storage SCP listens on, known to the PACS"
            )
        self.retrieve = retrieve
        self.peer = peer
        self.calling_ae = calling_ae
        self.storage_port = storage_port
        self.timeout = timeout
        self.limits = limits
        self.associations = 0

    @property
    def requests(self) -> int:
        """Associations opened so far (the DIMSE counterpart of HTTP requests)."""
        return self.associations

    def download_study(self, study_instance_uid: str, dest: Path) -> list[Path]:
        """The study's files under ``dest``, by C-GET or C-MOVE as configured."""
        if self.retrieve == "move":
            return self.move_study(study_instance_uid, dest)
        return self.get_study(study_instance_uid, dest)

    # -- verification and queries -------------------------------------------------------------------

    def echo(self) -> None:
        """C-ECHO; raises unless the peer answers with Success."""
        with self._association([Verification]) as assoc:
            status = assoc.send_c_echo()
            _check_status(status, "C-ECHO", self.peer)

    def find_studies(
        self,
        *,
        patient_id: str | None = None,
        accession_number: str | None = None,
        study_instance_uid: str | None = None,
        date_from: date | None = None,
        date_to: date | None = None,
    ) -> list[StudyRef]:
        """C-FIND at STUDY level by any of patient id, accession number, UID and date range."""
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_instance_uid or ""
        for keyword in StudyRef.KEYS:
            setattr(query, keyword, "")
        if patient_id is not None:
            query.PatientID = patient_id
        if accession_number is not None:
            query.AccessionNumber = accession_number
        if date_from is not None or date_to is not None:
            low = date_from.strftime("%Y%m%d") if date_from else ""
            high = date_to.strftime("%Y%m%d") if date_to else ""
            query.StudyDate = f"{low}-{high}"
        if not any((patient_id, accession_number, study_instance_uid, date_from, date_to)):
            raise ValueError(
                "a study search needs a patient id, accession number, StudyInstanceUID or date range"
            )
        return [StudyRef.from_dataset(ds) for ds in self._find(query)]

    def find_series(self, study_instance_uid: str) -> list[Dataset]:
        """C-FIND at SERIES level within one study."""
        query = _series_query(study_instance_uid)
        return list(self._find(query))

    # -- retrieval ---------------------------------------------------------------------------------

    def get_study(self, study_instance_uid: str, dest: Path) -> list[Path]:
        """C-GET the study into ``dest/<StudyInstanceUID>/``; the files written."""
        folder = _study_folder(dest, study_instance_uid)
        receiver = _Receiver(folder, self.limits, study_instance_uid)
        classes = self._sop_classes(study_instance_uid) or list(STORAGE_CLASSES)
        contexts = [StudyRootQueryRetrieveInformationModelGet, *_storage_contexts(classes)]
        roles = [build_role(uid, scp_role=True) for uid in classes]
        try:
            with (
                _chunked_receive(),
                self._association(
                    contexts, ext_neg=roles, handlers=[(evt.EVT_C_STORE, receiver.handle)]
                ) as assoc,
            ):
                for status, _ in assoc.send_c_get(
                    _retrieve_query(study_instance_uid), StudyRootQueryRetrieveInformationModelGet
                ):
                    _check_retrieve_status(status, "C-GET", self.peer, study_instance_uid)
        except ServerFailed:
            if receiver.over_limit:  # we refused instances past the byte limit; the PACS reports failure
                receiver.finish()
            # PACSes answer a C-GET of an unknown study with a bare failure status: tell the two apart.
            if not receiver.paths and not self.find_studies(study_instance_uid=study_instance_uid):
                raise NoImagingFound(f"the PACS {self.peer} has no study {study_instance_uid}") from None
            raise
        return receiver.finish()

    def move_study(self, study_instance_uid: str, dest: Path) -> list[Path]:
        """C-MOVE the study to our own storage SCP (``storage_port``), written under ``dest``."""
        if self.storage_port is None:
            raise ValueError(
                "C-MOVE needs storage_port: the port our storage SCP listens on, known to the PACS"
            )
        folder = _study_folder(dest, study_instance_uid)
        receiver = _Receiver(folder, self.limits, study_instance_uid)
        scp_ae = AE(ae_title=self.calling_ae)
        for uid in STORAGE_CLASSES:
            scp_ae.add_supported_context(uid, list(TRANSFER_SYNTAXES))
        with _chunked_receive():
            try:
                server = scp_ae.start_server(
                    ("0.0.0.0", self.storage_port),
                    block=False,
                    evt_handlers=[(evt.EVT_C_STORE, receiver.handle)],
                )
            except OSError as exc:
                raise ServerError(
                    f"cannot listen for C-MOVE on port {self.storage_port}: {exc.strerror}"
                ) from None
            assert server is not None  # start_server(block=False) returns the server
            try:
                with self._association([StudyRootQueryRetrieveInformationModelMove]) as assoc:
                    for status, _ in assoc.send_c_move(
                        _retrieve_query(study_instance_uid),
                        self.calling_ae,
                        StudyRootQueryRetrieveInformationModelMove,
                    ):
                        _check_retrieve_status(status, "C-MOVE", self.peer, study_instance_uid)
            except ServerFailed:
                if receiver.over_limit:
                    receiver.finish()
                raise
            finally:
                server.shutdown()
        return receiver.finish()

    # -- helpers -------------------------------------------------------------------------------------

    def _sop_classes(self, study_instance_uid: str) -> list[str]:
        """The SOP classes in the study (C-FIND at SERIES then IMAGE level, one association);
        empty if the PACS won't say."""
        classes: dict[str, None] = {}
        try:
            with self._association([StudyRootQueryRetrieveInformationModelFind]) as assoc:
                for series in self._c_find(assoc, _series_query(study_instance_uid)):
                    query = Dataset()
                    query.QueryRetrieveLevel = "IMAGE"
                    query.StudyInstanceUID = study_instance_uid
                    query.SeriesInstanceUID = series.SeriesInstanceUID
                    query.SOPInstanceUID = ""
                    query.SOPClassUID = ""
                    for identifier in self._c_find(assoc, query):
                        if identifier.get("SOPClassUID"):
                            classes.setdefault(str(identifier.SOPClassUID), None)
        except ServerFailed:
            return []
        return list(classes)

    def _find(self, query: Dataset) -> Iterator[Dataset]:
        with self._association([StudyRootQueryRetrieveInformationModelFind]) as assoc:
            return iter(self._c_find(assoc, query))

    def _c_find(self, assoc: Association, query: Dataset) -> list[Dataset]:
        found = []
        for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if status is None or "Status" not in status:
                raise ServerFailed(f"C-FIND to {self.peer}: the association was aborted or timed out")
            code = int(status.Status)
            if code in (0xFF00, 0xFF01) and identifier is not None:
                found.append(identifier)
            elif code != 0x0000:
                raise ServerFailed(f"C-FIND to {self.peer} failed with status 0x{code:04X}")
        return found

    def _association(
        self, contexts: list[Any], *, ext_neg: list[Any] | None = None, handlers: list[Any] | None = None
    ) -> _Associated:
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        for context in contexts:
            if isinstance(context, tuple):  # (abstract syntax, transfer syntaxes)
                ae.add_requested_context(context[0], list(context[1]))
            else:
                ae.add_requested_context(context, list(TRANSFER_SYNTAXES))
        rejection = _Rejection()
        try:
            assoc = ae.associate(
                self.peer.host,
                self.peer.port,
                ae_title=self.peer.ae_title,
                ext_neg=ext_neg,
                evt_handlers=[*(handlers or []), (evt.EVT_PDU_RECV, rejection.record)],
            )
        except OSError as exc:  # name resolution and the like
            raise ServerUnreachable(f"DIMSE peer {self.peer} is unreachable: {exc}") from None
        self.associations += 1
        if assoc.is_established:
            return _Associated(assoc)
        if assoc.is_rejected or rejection.reason is not None:
            raise AuthenticationFailed(
                f"DIMSE peer {self.peer} rejected the association from AE {self.calling_ae}"
                f" ({rejection.reason or 'no reason given'}); is our AE title registered on the PACS?"
            )
        raise ServerUnreachable(f"DIMSE peer {self.peer} is unreachable or aborted the association")


class _Rejection:
    """Notes an A-ASSOCIATE-RJ as it arrives.

    pynetdicom (3.0) can report a rejected association as aborted: when the peer closes the
    connection right after its A-ASSOCIATE-RJ, the requestor may see the closed socket before
    it reads the rejection off its queue. The PDU event fires on arrival either way.
    """

    def __init__(self) -> None:
        self.reason: str | None = None

    def record(self, event: evt.Event) -> None:
        if isinstance(event.pdu, A_ASSOCIATE_RJ):
            self.reason = f"{event.pdu.result_str}: {event.pdu.reason_str}"


class _Associated:
    def __init__(self, assoc: Association) -> None:
        self.assoc = assoc

    def __enter__(self) -> Association:
        return self.assoc

    def __exit__(self, *exc: object) -> None:
        if self.assoc.is_established:
            self.assoc.release()


class _Receiver:
    """C-STORE handler: move each received file into the study folder, within the byte limit."""

    def __init__(self, folder: Path, limits: DicomLimits, study_uid: str) -> None:
        self.folder = folder
        self.limits = limits
        self.study_uid = study_uid
        self.paths: list[Path] = []
        self.bytes = 0
        self.over_limit = False
        self._lock = threading.Lock()

    def handle(self, event: Any) -> int:
        sop_uid = str(event.request.AffectedSOPInstanceUID)
        try:
            name = _safe_uid(sop_uid)
        except ValueError:
            return 0xC211  # refuse: not a UID we can name a file after
        with self._lock:
            if self.over_limit:
                return 0xA700  # out of resources
            source = Path(event.dataset_path)
            size = source.stat().st_size
            if self.bytes + size > self.limits.max_bytes_per_study:
                self.over_limit = True
                return 0xA700
            target = self.folder / f"{name}.dcm"
            shutil.move(source, target)
            self.bytes += size
            self.paths.append(target)
        return 0x0000

    def finish(self) -> list[Path]:
        if self.over_limit:
            raise PixelDataTooLarge(
                f"study {self.study_uid} is larger than {self.limits.max_bytes_per_study} bytes on the wire "
                "(DicomLimits.max_bytes_per_study); retrieval stopped"
            )
        if not self.paths:
            raise NoImagingFound(f"the PACS sent no instance of study {self.study_uid}")
        return sorted(self.paths)


class _chunked_receive:
    """Have pynetdicom write received datasets straight to a file, not into memory."""

    _lock = threading.Lock()

    def __enter__(self) -> None:
        self._lock.acquire()
        self._saved = _config.STORE_RECV_CHUNKED_DATASET
        _config.STORE_RECV_CHUNKED_DATASET = True

    def __exit__(self, *exc: object) -> None:
        _config.STORE_RECV_CHUNKED_DATASET = self._saved
        self._lock.release()


def _storage_contexts(classes: list[str]) -> list[tuple[str, tuple[str, ...]]]:
    """Presentation contexts for receiving ``classes`` by C-GET.

    The acceptor of an association picks one transfer syntax per context, so a
    context offering all syntaxes gets whatever the PACS picks first and the PACS
    transcodes to it (lossy for lossy images). One context per (class, syntax)
    lets it send each instance as stored; past the limit of 128 contexts the
    remaining classes get one context with every syntax.
    """
    contexts: list[tuple[str, tuple[str, ...]]] = []
    budget = 127  # one is the query/retrieve context
    for n, uid in enumerate(classes):
        left_classes = len(classes) - n
        if budget - len(TRANSFER_SYNTAXES) >= left_classes - 1:
            contexts.extend((uid, (ts,)) for ts in TRANSFER_SYNTAXES)
            budget -= len(TRANSFER_SYNTAXES)
        elif budget > 0:
            contexts.append((uid, TRANSFER_SYNTAXES))
            budget -= 1
    return contexts


def _series_query(study_instance_uid: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_instance_uid
    for keyword in (
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "BodyPartExamined",
        "NumberOfSeriesRelatedInstances",
    ):
        setattr(query, keyword, "")
    return query


def _retrieve_query(study_instance_uid: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_instance_uid
    return query


def _check_status(status: Any, what: str, peer: DimsePeer) -> None:
    if status is None or "Status" not in status:
        raise ServerFailed(f"{what} to {peer}: no response (association aborted or timed out)")
    if int(status.Status) != 0x0000:
        raise ServerFailed(f"{what} to {peer} failed with status 0x{int(status.Status):04X}")


def _check_retrieve_status(status: Any, what: str, peer: DimsePeer, study_uid: str) -> None:
    if status is None or "Status" not in status:
        raise ServerFailed(f"{what} of study {study_uid} from {peer}: no response (aborted or timed out)")
    code = int(status.Status)
    if code in (0x0000, 0xFF00):
        return
    if code == 0xB000:  # some sub-operations failed
        failed = int(status.get("NumberOfFailedSuboperations", 0) or 0)
        raise ServerFailed(f"{what} of study {study_uid} from {peer}: {failed} instance(s) failed")
    if code == 0xA801:
        raise ServerFailed(
            f"{what} from {peer}: the PACS does not know the move destination; register our AE title"
        )
    if code == 0xA701 or code == 0xA702 or code == 0xA700:
        raise ServerFailed(f"{what} of study {study_uid} from {peer}: out of resources (0x{code:04X})")
    raise ServerFailed(f"{what} of study {study_uid} from {peer} failed with status 0x{code:04X}")


def _study_folder(dest: Path, study_uid: str) -> Path:
    folder = dest / _safe_uid(study_uid)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _safe_uid(uid: str) -> str:
    if not uid or len(uid) > 64 or any(not (c.isdigit() or c == ".") for c in uid):
        raise ValueError(f"{uid!r} is not a DICOM UID")
    return uid


def _check_ae_title(aet: str) -> None:
    if not aet or len(aet) > 16 or not aet.isascii() or "\\" in aet or not aet.strip():
        raise ValueError(f"an AE title is 1 to 16 ASCII characters, not {aet!r}")


os.environ.setdefault("PYNETDICOM_LOG_LEVEL", "WARNING")
