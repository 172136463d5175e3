"""A hook call's FHIR data: what it prefetched, the rest from ``fhirServer``, as a PatientRecord.

`load_prefetch` takes a service's prefetch templates (`plugin.cds.services`), renders them with
the call's context (`plugin.cds.tokens`), and for each key:

- a value sent in ``prefetch`` is used as it is: for a read, a resource of the template's type
  and id; for a search, a ``searchset`` Bundle (its ``OperationOutcome`` entries set aside);
- a key sent as ``null`` has no data: the CDS Client ran the query and found nothing;
- a key sent as an ``OperationOutcome`` could not be prefetched; it is not queried again (the
  specification sends it "to prevent the CDS Service from incurring an unneeded follow-up
  query"), so the call cannot be answered (`PrefetchUnavailable`, HTTP 412);
- a key not sent is queried on ``fhirServer`` with the ``fhirAuthorization`` bearer token
  (`connectors.fhir.rest.FhirClient`), all side by side; without both, `PrefetchUnavailable`
  names the keys; a server that refuses or fails does the same;
- a template whose token has no value in this call (``{{context.encounterId}}`` without an
  encounter) cannot be run by anyone and has no data.

A search whose template has ``_count`` asks for one page: ``_count`` limits the results to the
most recent (with ``_sort``). Without ``_count`` every page is read, following the ``next``
links of a prefetched Bundle on ``fhirServer`` too; with no server to ask, that key is listed
in `Prefetched.incomplete`. With a server, the ImagingStudies and DiagnosticReports the drafts
cite and the Endpoints and Devices the ImagingStudies reference are read when not in hand.

The resources then become the patient's `PatientRecord` through the same extraction as a
Bundle file (`connectors.fhir.extract.records_from_resources`), validated with
``fhir.resources.R4B`` under ``strictness``: ``raise`` (the default) answers a resource that
does not validate with `PrefetchInvalid` naming its key (HTTP 400); ``warn`` and ``ignore``
leave it out and list it in ``PatientRecord.problems``. A value that is not what its template
asks for (a Bundle for a read, another patient) is `PrefetchInvalid` under every strictness.
Logs name prefetch keys and resource ids, at DEBUG; never tokens or query URLs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from connectors.auth import Credentials
from connectors.domain import PatientRecord
from connectors.errors import FhirResourceInvalid, RemoteNotFound, ServerError
from connectors.fhir.extract import records_from_resources, validate_resource
from connectors.fhir.fetch import fetch_referenced
from connectors.fhir.rest import FhirClient, SearchPage
from connectors.http import RetryPolicy, Timeouts, outcome_issues
from connectors.strictness import Strictness
from plugin.cds.models import CdsRequest, HookContext
from plugin.cds.services import CdsService, SelectedStudy, resource_id
from plugin.cds.tokens import FhirQuery, parse_relative_url, render_template
from plugin.errors import CdsRequestInvalid, FieldProblem, PrefetchInvalid, PrefetchUnavailable

__all__ = ["Prefetched", "load_prefetch"]

logger = logging.getLogger(__name__)

JSON = dict[str, Any]
Key = tuple[str, str]
_MAX_PAGES = 1000


@dataclass(frozen=True)
class Prefetched:
    """What `load_prefetch` found for one call.

    ``sources`` says where each prefetch key's data came from: ``prefetch``, ``fhirServer``,
    ``null`` (the CDS Client has no data), ``OperationOutcome`` (it could not prefetch a key the
    call did not need), ``no token`` (the template cannot be run in this call) or ``not needed``
    (not sent, and not asked for through ``needed``). ``incomplete``
    lists keys whose prefetched search had more pages that could not be read. ``requests`` is
    the number of requests made to ``fhirServer``.
    """

    context: HookContext
    record: PatientRecord
    studies: tuple[SelectedStudy, ...]
    sources: Mapping[str, str]
    incomplete: tuple[str, ...]
    requests: int


async def load_prefetch(
    request: CdsRequest,
    service: CdsService,
    *,
    needed: Collection[str] | None = None,
    strictness: Strictness | str = Strictness.RAISE,
    now: datetime | None = None,
    timeouts: Timeouts = Timeouts(),
    retry: RetryPolicy = RetryPolicy(),
    https_only: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Prefetched:
    """The record, the studies to check and the sources of one hook call (see the module docstring).

    ``needed`` are the prefetch keys the call cannot do without (default: all of the service's;
    ``patient`` always); other keys are used when sent and never queried. ``https_only``
    refuses a ``fhirServer`` that is not ``https``. Raises `CdsRequestInvalid` for a context
    the hook does not define, `PrefetchInvalid` (400) and `PrefetchUnavailable` (412).
    """
    context = service.parse_context(request)
    wanted = set(service.prefetch) if needed is None else {"patient", *needed}
    if unknown := wanted - set(service.prefetch):
        raise ValueError(f"{service.id} has no prefetch keys {sorted(unknown)}")
    run = _Run(service, context, Strictness.of(strictness))
    run.take_prefetch(request.prefetch or {}, wanted)
    if run.to_query or run.next_pages or run.missing_citations():
        if request.fhirServer is None or request.fhirAuthorization is None:
            run.without_server()
        else:
            if https_only and not request.fhirServer.startswith("https://"):
                raise CdsRequestInvalid(
                    "the FHIR server must be reached over HTTPS",
                    [FieldProblem("fhirServer", "must be an https URL")],
                )
            credentials = Credentials(token=request.fhirAuthorization.token)
            async with FhirClient(
                request.fhirServer,
                credentials=credentials,
                timeouts=timeouts,
                retry=retry,
                transport=transport,
            ) as client:
                await run.query(client)
    record = run.record()
    return Prefetched(
        context=context,
        record=record,
        studies=service.select_studies(context, record, now=now),
        sources=dict(run.sources),
        incomplete=tuple(run.incomplete),
        requests=run.requests,
    )


class _Run:
    """The state of one `load_prefetch` call."""

    def __init__(self, service: CdsService, context: HookContext, strictness: Strictness) -> None:
        self.service = service
        self.context = context
        self.strictness = strictness
        self.queries: dict[str, FhirQuery] = {}
        self.found: dict[str, list[JSON]] = {}
        self.sources: dict[str, str] = {}
        self.to_query: list[str] = []
        self.next_pages: dict[str, str] = {}
        self.incomplete: list[str] = []
        self.tried: set[str] = set()  # cited references read (or tried) already
        self.extra: list[JSON] = []  # cited resources and references read from the server
        self.requests = 0

    # -- what the CDS Client sent ------------------------------------------------------------------

    def take_prefetch(self, given: Mapping[str, Any], wanted: set[str]) -> None:
        for key, template in self.service.prefetch.items():
            url = render_template(template, self.context)
            if url is None:
                self.sources[key] = "no token"
                continue
            query = self.queries[key] = parse_relative_url(url)
            if key not in given:
                if key in wanted:
                    self.to_query.append(key)
                else:
                    self.sources[key] = "not needed"
            elif given[key] is None:
                self.sources[key], self.found[key] = "null", []
            else:
                self.sources[key] = "prefetch"
                self.found[key] = self._value(key, given[key], query, required=key in wanted)

    def _value(self, key: str, value: Any, query: FhirQuery, *, required: bool) -> list[JSON]:
        where = f"prefetch.{key}"
        rtype = value.get("resourceType") if isinstance(value, Mapping) else None
        if not isinstance(rtype, str):
            raise PrefetchInvalid(key, [FieldProblem(where, "must be a FHIR resource, a Bundle, or null")])
        if rtype == "OperationOutcome":
            if not required:
                self.sources[key] = "OperationOutcome"
                return []
            said = "; ".join(outcome_issues(value)[:3]) or "no details"
            raise PrefetchUnavailable(
                f"the CDS Client could not prefetch {key!r} (its OperationOutcome says: {said}); "
                "the service needs that data to answer",
                [key],
            )
        if query.is_read:
            if rtype != query.resource_type or value.get("id") != query.resource_id:
                raise PrefetchInvalid(
                    key,
                    [
                        FieldProblem(
                            where, f"must be the {query.resource_type} its template reads, not a {rtype}"
                        )
                    ],
                )
            return [dict(value)]
        if rtype != "Bundle":
            raise PrefetchInvalid(key, [FieldProblem(where, f"must be a searchset Bundle, not a {rtype}")])
        if not isinstance(value.get("entry", []), list):
            raise PrefetchInvalid(key, [FieldProblem(f"{where}.entry", "must be an array")])
        page = SearchPage(dict(value))
        if page.outcomes:
            logger.debug("prefetch %s: %d OperationOutcome entries set aside", key, len(page.outcomes))
        if page.next_url and query.param("_count") is None:
            self.next_pages[key] = page.next_url
        return page.matches + page.included

    def without_server(self) -> None:
        """No fhirServer and fhirAuthorization: what is missing stays missing."""
        if self.to_query:
            raise PrefetchUnavailable(
                f"prefetch keys {', '.join(self.to_query)} were not sent, and the request has no "
                "fhirServer with fhirAuthorization to read them from; prefetch them, or give both",
                self.to_query,
            )
        for key in self.next_pages:
            logger.debug("prefetch %s: more pages, and no fhirServer to read them from", key)
            self.incomplete.append(key)

    # -- what the service reads itself -------------------------------------------------------------

    async def query(self, client: FhirClient) -> None:
        try:
            jobs = [self._search(client, key) for key in self.to_query]
            jobs += [self._follow(client, key, url) for key, url in self.next_pages.items()]
            for outcome in await asyncio.gather(*jobs, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    raise outcome
            for _ in range(2):  # cited reports, then the studies they cite
                for ref in self.missing_citations():
                    await self._read_cited(client, ref)
            kept = {k: r for k, r in self._resources() if k[0] in ("Device", "Endpoint", "ImagingStudy")}
            before = set(kept)
            await fetch_referenced(client, kept)
            self._add_extra(r for k, r in kept.items() if k not in before)
        except ServerError as exc:
            status = f"HTTP {exc.status}" if exc.status else type(exc).__name__
            raise PrefetchUnavailable(
                f"the FHIR server did not give the data the service needs ({status}: {exc}); "
                "prefetch it, or check fhirServer and the scopes of fhirAuthorization",
                [*self.to_query, *self.next_pages],
            ) from exc
        finally:
            self.requests = client.requests

    async def _search(self, client: FhirClient, key: str) -> None:
        query = self.queries[key]
        self.sources[key] = "fhirServer"
        if query.is_read:
            assert query.resource_id is not None
            try:
                self.found[key] = [await client.read(query.resource_type, query.resource_id)]
            except RemoteNotFound:
                self.found[key] = []
            return
        params: dict[str, list[str]] = {}
        for name, value in query.params:
            params.setdefault(name, []).append(value)
        if query.param("_count") is None:
            self.found[key] = await client.search_all(query.resource_type, params)
            return
        async for page in client.pages(query.resource_type, params):
            self.found[key] = page.matches + page.included
            break  # _count: the first page is the answer

    async def _follow(self, client: FhirClient, key: str, url: str | None) -> None:
        for _ in range(_MAX_PAGES):
            if url is None:
                return
            response = await client.request(
                "GET", client.same_server(url), what=f"next page of prefetch {key}"
            )
            body = response.json()
            if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
                logger.debug("prefetch %s: a next page that is not a Bundle; stopped", key)
                return
            page = SearchPage(body)
            self.found[key] += page.matches + page.included
            url = page.next_url
        logger.debug("prefetch %s: stopped after %d pages", key, _MAX_PAGES)

    def missing_citations(self) -> list[str]:
        """Cited ``ImagingStudy/x`` and ``DiagnosticReport/y`` not in hand (reports' studies included)."""
        have = self.tried | {f"{t}/{i}" for t, i in (k for k, _ in self._resources())}
        cited = self.service.cited_references(self.context)
        for _, report in self._resources():
            if (
                report.get("resourceType") == "DiagnosticReport"
                and f"DiagnosticReport/{report.get('id')}" in cited
            ):
                cited += [
                    f"ImagingStudy/{i}"
                    for ref in report.get("imagingStudy") or ()
                    if (i := resource_id(ref, "ImagingStudy"))
                ]
        return [ref for ref in dict.fromkeys(cited) if ref not in have]

    def _add_extra(self, resources: Iterable[JSON]) -> None:
        """Keep what the service read on its own when it is valid and is this patient's (or no one's):
        a cited report of another patient or a broken Endpoint is left out, not an error."""
        owner = f"Patient/{self.context.patientId}"
        for resource in resources:
            subject = resource.get("patient" if resource.get("resourceType") == "Device" else "subject")
            reference = subject.get("reference") if isinstance(subject, Mapping) else None
            if subject is not None and not (isinstance(reference, str) and reference.endswith(owner)):
                logger.debug(
                    "%s/%s is not this patient's; left out", resource.get("resourceType"), resource.get("id")
                )
                continue
            try:
                validate_resource(resource)
            except FhirResourceInvalid as exc:
                logger.debug("left out: %s", exc)
                continue
            self.extra.append(resource)

    async def _read_cited(self, client: FhirClient, ref: str) -> None:
        rtype, _, rid = ref.partition("/")
        self.tried.add(ref)
        try:
            self._add_extra([await client.read(rtype, rid)])
        except RemoteNotFound:
            logger.debug("cited %s not found on the FHIR server", ref)
        except ValueError:
            logger.debug("cited reference is not a [type]/[id]; not read")

    # -- the record ---------------------------------------------------------------------------------

    def _resources(self) -> list[tuple[Key, JSON]]:
        out = []
        for resource in [r for found in self.found.values() for r in found] + self.extra:
            rtype, rid = resource.get("resourceType"), resource.get("id")
            if isinstance(rtype, str) and isinstance(rid, str):
                out.append(((rtype, rid), resource))
        return out

    def record(self) -> PatientRecord:
        patient_id = self.context.patientId
        patients = self.found.get("patient") or []
        if not patients:
            raise PrefetchUnavailable(
                f"there is no Patient/{patient_id} to check: the CDS Client prefetched null or the "
                "FHIR server does not have it",
                ["patient"],
            )
        origin: dict[Key, str] = {}
        resources: list[JSON] = []
        drafts = self.service.draft_resources(self.context) if self.service.hook.drafts_in_record else []
        for n, draft in enumerate(drafts):
            draft = dict(draft)
            draft.setdefault("id", f"draft-{n}")
            origin[(str(draft.get("resourceType")), draft["id"])] = f"context.{self.service.hook.drafts}"
            resources.append(draft)
        for key, found in self.found.items():
            for resource in found:
                origin.setdefault((str(resource.get("resourceType")), str(resource.get("id"))), key)
                resources.append(resource)
        resources += self.extra
        try:
            records = records_from_resources(
                resources, strictness=self.strictness, source="CDS Hooks prefetch"
            )
        except FhirResourceInvalid as exc:
            raise self._invalid(exc, origin) from exc
        record = records.get(patient_id)
        if record is None:
            raise PrefetchInvalid(
                "patient",
                [FieldProblem("prefetch.patient", f"must be Patient/{patient_id}, the context's patient")],
            )
        return record

    def _invalid(self, exc: FhirResourceInvalid, origin: Mapping[Key, str]) -> CdsRequestInvalid:
        """The 400 for a resource that does not validate, located at the key (or context field) it came in."""
        where = origin.get((exc.resource_type, exc.resource_id or "")) or next(
            (
                k
                for k, found in self.found.items()
                if any(r.get("resourceType") == exc.resource_type for r in found)
            ),
            "patient",
        )
        if where.startswith("context."):
            return CdsRequestInvalid(
                "a resource of the context is not valid FHIR R4", [FieldProblem(where, str(exc))]
            )
        location = (
            f"prefetch.{where}" if self.sources.get(where) == "prefetch" else f"{where} (from fhirServer)"
        )
        return PrefetchInvalid(where, [FieldProblem(location, str(exc))])
