"""A FHIR R4 REST client (httpx, async): capabilities, read, search with paging, create, update, transactions.

    async with FhirClient("https://ehr.example.org/fhir", credentials=Credentials(token=...)) as fhir:
        await fhir.capabilities()
        patient = await fhir.read("Patient", "123")
        labs = await fhir.search_all("Observation", {"patient": "123", "category": "laboratory"})

Searches follow ``Bundle.link[relation=next]`` until the last page, but only to
the server they started on (a ``next`` link to another host would carry the
credentials elsewhere). Every request goes through `connectors.http.send`:
timeouts, retries with backoff on 429/5xx honouring ``Retry-After``, and
OperationOutcome bodies turned into specific errors. ``requests`` counts the
HTTP requests made, for the benchmarks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import urlencode

import httpx

from connectors.auth import Credentials, httpx_auth
from connectors.errors import RequestRejected, ServerError
from connectors.http import RetryPolicy, Timeouts, redact_url, send

__all__ = ["FHIR_JSON", "FhirClient", "SearchPage", "Written"]

logger = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
_MAX_PAGES = 10_000  # a server whose next links never end is broken; stop rather than loop forever

JSON = dict[str, Any]
Params = Mapping[str, str | int | Sequence[str]]


class SearchPage:
    """One page of a search: the matches, the included resources, and the next link."""

    __slots__ = ("included", "matches", "next_url", "outcomes", "total")

    def __init__(self, bundle: JSON) -> None:
        self.matches: list[JSON] = []
        self.included: list[JSON] = []
        self.outcomes: list[JSON] = []
        for entry in bundle.get("entry") or ():
            resource = entry.get("resource") if isinstance(entry, Mapping) else None
            if not isinstance(resource, dict):
                continue
            mode = (entry.get("search") or {}).get("mode")
            if mode == "include":
                self.included.append(resource)
            elif mode == "outcome" or resource.get("resourceType") == "OperationOutcome":
                self.outcomes.append(resource)
            else:
                self.matches.append(resource)
        self.next_url = next(
            (
                link.get("url")
                for link in bundle.get("link") or ()
                if isinstance(link, Mapping) and link.get("relation") == "next" and link.get("url")
            ),
            None,
        )
        total = bundle.get("total")
        self.total = total if isinstance(total, int) else None


@dataclass(frozen=True)
class Written:
    """What a create or update left on the server: the resource's type, id and version.

    ``created`` is True when the server made a new resource (HTTP 201), False when a
    conditional create found one already there or an update replaced one (HTTP 200).
    ``resource`` is the body the server returned, when it returned one.
    """

    resource_type: str
    id: str
    version_id: str | None
    created: bool
    resource: JSON | None = None

    @property
    def reference(self) -> str:
        """The relative reference, ``[type]/[id]``."""
        return f"{self.resource_type}/{self.id}"


class FhirClient:
    """An async FHIR R4 client bound to one server base URL.

    ``max_concurrency`` bounds the requests in flight from this client (the
    searches of one case run side by side, but never more than this).
    """

    def __init__(
        self,
        base_url: str,
        *,
        credentials: Credentials | None = None,
        timeouts: Timeouts = Timeouts(),
        retry: RetryPolicy = RetryPolicy(),
        max_concurrency: int = 8,
        page_size: int = 200,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"FHIR base URL must start with http:// or https://, not {redact_url(base_url)!r}"
            )
        self.base_url = base_url.rstrip("/")
        #: the base URL for messages and logs: without the credentials a URL may carry
        self.safe_url = redact_url(self.base_url)
        self.retry = retry
        self.page_size = page_size
        self.requests = 0
        self._origin = httpx.URL(self.base_url).copy_with(path="/", query=None, fragment=None)
        self._limit = asyncio.Semaphore(max_concurrency)
        self._http = httpx.AsyncClient(
            auth=httpx_auth(credentials, fhir_base=self.base_url),
            timeout=timeouts.httpx(),
            headers={"Accept": FHIR_JSON, **(headers or {})},
            transport=transport,
            limits=httpx.Limits(max_connections=max_concurrency),
            follow_redirects=False,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- interactions ------------------------------------------------------------------------------

    async def capabilities(self) -> JSON:
        """The server's CapabilityStatement; `RequestRejected` unless it speaks FHIR R4 (4.0.x)."""
        statement = await self._json("GET", f"{self.base_url}/metadata", what="FHIR capabilities")
        if statement.get("resourceType") != "CapabilityStatement":
            raise RequestRejected(
                f"{self.safe_url}/metadata is not a CapabilityStatement "
                f"(got {statement.get('resourceType')!r}); is this the FHIR base URL?",
                url=f"{self.safe_url}/metadata",
            )
        version = str(statement.get("fhirVersion") or "")
        if not version.startswith("4.0"):
            raise RequestRejected(
                f"{self.safe_url} speaks FHIR {version or 'of an unknown version'}; "
                "imaging-crosscheck needs R4 (4.0.x)",
                url=f"{self.safe_url}/metadata",
            )
        return statement

    async def read(self, resource_type: str, resource_id: str) -> JSON:
        """``GET [base]/[type]/[id]``; `RemoteNotFound` when it does not exist."""
        _check_segment(resource_type, "resource type")
        _check_segment(resource_id, "resource id")
        resource = await self._json(
            "GET", f"{self.base_url}/{resource_type}/{resource_id}", what=f"FHIR read of {resource_type}"
        )
        if resource.get("resourceType") != resource_type:
            raise RequestRejected(
                f"reading {resource_type}/{resource_id} returned a {resource.get('resourceType')!r}",
                url=f"{self.safe_url}/{resource_type}",
            )
        return resource

    async def pages(self, resource_type: str, params: Params | None = None) -> AsyncIterator[SearchPage]:
        """Every page of ``GET [base]/[type]?params``, following ``next`` links on the same server."""
        _check_segment(resource_type, "resource type")
        query = dict(params or {})
        query.setdefault("_count", self.page_size)
        url: str | None = f"{self.base_url}/{resource_type}"
        request_params: Any = _query(query)
        for _ in range(_MAX_PAGES):
            assert url is not None
            bundle = await self._json(
                "GET", url, params=request_params, what=f"FHIR search of {resource_type}"
            )
            if bundle.get("resourceType") != "Bundle":
                raise RequestRejected(
                    f"a search of {resource_type} returned a {bundle.get('resourceType')!r}, not a Bundle",
                    url=redact_url(url),
                )
            page = SearchPage(bundle)
            yield page
            if page.next_url is None:
                return
            url = self.same_server(page.next_url)
            request_params = None
        raise ServerError(f"a search of {resource_type} returned more than {_MAX_PAGES} pages; stopped")

    async def search_all(self, resource_type: str, params: Params | None = None) -> list[JSON]:
        """All matches and included resources of a search, every page, in server order."""
        found: list[JSON] = []
        async for page in self.pages(resource_type, params):
            found.extend(page.matches)
            found.extend(page.included)
        return found

    async def create(self, resource: JSON, *, if_none_exist: Params | None = None) -> Written:
        """``POST [base]/[type]``; with ``if_none_exist`` a conditional create (``If-None-Exist``).

        A conditional create is safe to retry (the server creates at most one
        resource matching the criteria), so it is retried like a read; a plain
        create only when the server cannot have acted on it. A server that holds
        more than one match answers 412, raised as `RequestRejected`.
        """
        resource_type = _resource_type(resource)
        headers = {"Content-Type": FHIR_JSON, "Prefer": "return=representation"}
        if if_none_exist is not None:
            criteria = _query(if_none_exist)
            if not criteria:
                raise ValueError("a conditional create needs search criteria in if_none_exist")
            headers["If-None-Exist"] = urlencode(criteria)
        response = await self.request(
            "POST",
            f"{self.base_url}/{resource_type}",
            json=resource,
            headers=headers,
            what=f"FHIR create of {resource_type}",
            idempotent=if_none_exist is not None,
        )
        return self._written(response, resource_type)

    async def update(self, resource: JSON) -> Written:
        """``PUT [base]/[type]/[id]``: replaces the resource, or creates it with that id where the
        server allows clients to choose ids (``CapabilityStatement.rest.resource.updateCreate``)."""
        resource_type = _resource_type(resource)
        resource_id = str(resource.get("id") or "")
        _check_segment(resource_id, "resource id")
        response = await self.request(
            "PUT",
            f"{self.base_url}/{resource_type}/{resource_id}",
            json=resource,
            headers={"Content-Type": FHIR_JSON, "Prefer": "return=representation"},
            what=f"FHIR update of {resource_type}",
        )
        return self._written(response, resource_type)

    async def transaction(self, bundle: JSON) -> JSON:
        """POST a transaction (or batch) Bundle to the base; the response Bundle."""
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") not in ("transaction", "batch"):
            raise ValueError("a transaction needs a Bundle of type 'transaction' or 'batch'")
        return await self._json(
            "POST",
            self.base_url,
            json=bundle,
            what="FHIR transaction",
            idempotent=False,
            headers={"Content-Type": FHIR_JSON},
        )

    async def request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        params: Any = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool = True,
        stream: bool = False,
    ) -> httpx.Response:
        """One request with retries and error mapping, within the concurrency bound."""
        request = self._http.build_request(method, url, params=params, json=json, headers=headers)
        async with self._limit:
            self.requests += 1
            logger.debug("%s %s", method, redact_url(request.url))
            return await send(
                self._http, request, policy=self.retry, what=what, idempotent=idempotent, stream=stream
            )

    # -- helpers -----------------------------------------------------------------------------------

    async def _json(self, method: str, url: str, *, what: str, **kwargs: Any) -> JSON:
        response = await self.request(method, url, what=what, **kwargs)
        try:
            body = response.json()
        except ValueError:
            raise RequestRejected(
                f"{what}: the server answered HTTP {response.status_code} with a body that is not JSON "
                f"({response.headers.get('Content-Type', 'no Content-Type')})",
                url=redact_url(response.request.url),
                status=response.status_code,
            ) from None
        if not isinstance(body, dict):
            raise RequestRejected(
                f"{what}: the server answered with JSON that is not a resource", url=redact_url(url)
            )
        return body

    def _written(self, response: httpx.Response, resource_type: str) -> Written:
        """The id and version of a created or updated resource, from its body or its ``Location``."""
        body: Any = None
        if response.content:
            try:
                body = response.json()
            except ValueError:
                body = None
        resource = body if isinstance(body, dict) and body.get("resourceType") == resource_type else None
        resource_id = str(resource.get("id") or "") if resource else ""
        version_id = str((resource.get("meta") or {}).get("versionId") or "") if resource else ""
        location = response.headers.get("Location") or response.headers.get("Content-Location") or ""
        path = httpx.URL(location).path.rstrip("/").split("/") if location else []
        if "_history" in path and path.index("_history") >= 2:
            at = path.index("_history")
            resource_id = resource_id or path[at - 1]
            version_id = version_id or (path[at + 1] if len(path) > at + 1 else "")
        elif len(path) >= 2 and path[-2] == resource_type:
            resource_id = resource_id or path[-1]
        if not resource_id:
            raise RequestRejected(
                f"the server answered the write of a {resource_type} with HTTP {response.status_code} "
                "but neither a resource nor a Location saying where it is",
                url=redact_url(response.request.url),
                status=response.status_code,
            )
        return Written(resource_type, resource_id, version_id or None, response.status_code == 201, resource)

    def same_server(self, link: str) -> str:
        """``link`` as an absolute URL on this server; `RequestRejected` if it points at another one."""
        target = httpx.URL(self.base_url + "/").join(link)  # also resolves scheme-relative //host links
        if (target.scheme, target.host, target.port) != (
            self._origin.scheme,
            self._origin.host,
            self._origin.port,
        ):
            raise RequestRejected(
                f"the server's next link points at another server ({target.scheme}://{target.host}); "
                "not following it with this server's credentials",
                url=redact_url(target),
            )
        return str(target)


def _query(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        if isinstance(value, list | tuple):
            pairs.extend((key, str(v)) for v in value)
        else:
            pairs.append((key, str(value)))
    return pairs


def _resource_type(resource: JSON) -> str:
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        raise ValueError("a resource to write needs its resourceType")
    _check_segment(resource_type, "resource type")
    return resource_type


def _check_segment(value: str, what: str) -> None:
    if not value or any(c in value for c in "/?#") or value in (".", ".."):
        raise ValueError(f"{what} {value!r} is not a valid URL path segment")
