"""`connectors.fhir.rest.FhirClient` against a scripted FHIR server (`httpx.MockTransport`)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from connectors.auth import Credentials
from connectors.errors import RemoteNotFound, RequestRejected, ServerFailed
from connectors.fhir.rest import FHIR_JSON, FhirClient, SearchPage, Written
from connectors.http import RetryPolicy

BASE = "https://ehr.example.org/fhir"
FAST = RetryPolicy(attempts=3, backoff=0.001, max_wait=0.05)

Handler = Callable[[httpx.Request], httpx.Response]


class Server:
    """A FHIR server made of one handler; records every request it receives."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    def run(self, interaction: Callable[[FhirClient], Awaitable[Any]], **options: Any) -> Any:
        """``interaction(client)`` with a `FhirClient` on ``BASE`` whose transport is this server."""
        options.setdefault("retry", FAST)

        async def go() -> Any:
            async with FhirClient(BASE, transport=httpx.MockTransport(self), **options) as client:
                return await interaction(client)

        return asyncio.run(go())


def bundle(*entries: dict[str, Any], next_url: str | None = None, total: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "entry": list(entries)}
    if next_url:
        body["link"] = [{"relation": "self", "url": f"{BASE}/x"}, {"relation": "next", "url": next_url}]
    if total is not None:
        body["total"] = total
    return body


def match(resource_type: str, resource_id: str) -> dict[str, Any]:
    return {"resource": {"resourceType": resource_type, "id": resource_id}, "search": {"mode": "match"}}


def include(resource_type: str, resource_id: str) -> dict[str, Any]:
    return {"resource": {"resourceType": resource_type, "id": resource_id}, "search": {"mode": "include"}}


def warning(text: str) -> dict[str, Any]:
    issue = {"severity": "warning", "code": "processing", "diagnostics": text}
    return {"resource": {"resourceType": "OperationOutcome", "issue": [issue]}, "search": {"mode": "outcome"}}


def ids(resources: list[dict[str, Any]]) -> list[str]:
    return [f"{r['resourceType']}/{r['id']}" for r in resources]


def three_pages(request: httpx.Request) -> httpx.Response:
    page = request.url.params.get("page", "1")
    if page == "1":
        body = bundle(
            match("Observation", "o1"),
            match("Observation", "o2"),
            include("Patient", "p1"),
            warning("_sort ignored"),
            next_url=f"{BASE}?_getpages=abc&page=2",
            total=4,
        )
    elif page == "2":
        body = bundle(match("Observation", "o3"), next_url=f"{BASE}?_getpages=abc&page=3")
    else:
        body = bundle(match("Observation", "o4"), include("Encounter", "e1"))
    return httpx.Response(200, json=body)


# -- search ---------------------------------------------------------------------------------------


def test_search_all_follows_next_links_across_three_pages() -> None:
    server = Server(three_pages)
    found = server.run(
        lambda fhir: fhir.search_all("Observation", {"patient": "p1", "category": "laboratory"})
    )
    assert ids(found) == [
        "Observation/o1",
        "Observation/o2",
        "Patient/p1",
        "Observation/o3",
        "Observation/o4",
        "Encounter/e1",
    ]
    assert "OperationOutcome" not in {r["resourceType"] for r in found}
    first, second, third = (r.url for r in server.requests)
    assert first.path == "/fhir/Observation"
    assert dict(first.params) == {"patient": "p1", "category": "laboratory", "_count": "200"}
    # later pages are fetched exactly as linked, without the first page's parameters added again
    assert str(second) == f"{BASE}?_getpages=abc&page=2"
    assert str(third) == f"{BASE}?_getpages=abc&page=3"


def test_pages_keep_matches_included_resources_and_outcomes_apart() -> None:
    async def collect(fhir: FhirClient) -> list[SearchPage]:
        return [page async for page in fhir.pages("Observation")]

    pages = Server(three_pages).run(collect)
    assert len(pages) == 3
    assert ids(pages[0].matches) == ["Observation/o1", "Observation/o2"]
    assert ids(pages[0].included) == ["Patient/p1"]
    assert [o["issue"][0]["diagnostics"] for o in pages[0].outcomes] == ["_sort ignored"]
    assert pages[0].total == 4 and pages[1].total is None
    assert pages[2].next_url is None


def test_page_size_sets_count_and_params_override_it() -> None:
    server = Server(lambda request: httpx.Response(200, json=bundle()))
    server.run(lambda fhir: fhir.search_all("Patient", {"name": "x"}), page_size=50)
    server.run(lambda fhir: fhir.search_all("Patient", {"_count": 10}), page_size=50)
    assert server.requests[0].url.params["_count"] == "50"
    assert server.requests[1].url.params.get_list("_count") == ["10"]


def test_list_parameters_repeat_the_key() -> None:
    server = Server(lambda request: httpx.Response(200, json=bundle()))
    server.run(lambda fhir: fhir.search_all("Observation", {"code": ["1234-5", "6789-0"], "_count": 5}))
    assert server.requests[0].url.params.get_list("code") == ["1234-5", "6789-0"]


@pytest.mark.parametrize(
    ("link", "followed"),
    [
        ("Observation?page=2", f"{BASE}/Observation?page=2"),
        ("?page=2", f"{BASE}/?page=2"),
        ("/fhir/Observation?page=2", f"{BASE}/Observation?page=2"),
        ("https://EHR.example.org:443/fhir/Observation?page=2", f"{BASE}/Observation?page=2"),
    ],
)
def test_relative_and_equivalent_next_links_are_resolved_against_the_base(link: str, followed: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if "page" in request.url.params:
            return httpx.Response(200, json=bundle(match("Observation", "o2")))
        return httpx.Response(200, json=bundle(match("Observation", "o1"), next_url=link))

    server = Server(handler)
    assert ids(server.run(lambda fhir: fhir.search_all("Observation"))) == [
        "Observation/o1",
        "Observation/o2",
    ]
    assert str(server.requests[1].url) == followed


@pytest.mark.parametrize(
    "link",
    [
        "https://evil.example/fhir/Observation?page=2",
        "http://ehr.example.org/fhir/Observation?page=2",  # same host, but no TLS
        "https://ehr.example.org:8443/fhir/Observation?page=2",
        "https://ehr.example.org@evil.example/fhir/Observation?page=2",
    ],
)
def test_next_link_to_another_server_is_refused_and_never_requested(link: str) -> None:
    server = Server(
        lambda request: httpx.Response(200, json=bundle(match("Observation", "o1"), next_url=link))
    )
    with pytest.raises(RequestRejected) as info:
        server.run(lambda fhir: fhir.search_all("Observation"), credentials=Credentials(token="tok"))
    assert "another server" in str(info.value)
    assert "page=2" not in str(info.value)
    assert [(r.url.scheme, r.url.host, r.url.port) for r in server.requests] == [
        ("https", "ehr.example.org", None)
    ]


def test_scheme_relative_next_link_to_another_server_is_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "evil.example":
            return httpx.Response(200, json=bundle())
        return httpx.Response(200, json=bundle(next_url="//evil.example/fhir/Observation?page=2"))

    server = Server(handler)
    with pytest.raises(RequestRejected):
        server.run(lambda fhir: fhir.search_all("Observation"), credentials=Credentials(token="tok"))
    assert {r.url.host for r in server.requests} == {"ehr.example.org"}


def test_search_answered_with_something_other_than_a_bundle_is_rejected() -> None:
    server = Server(lambda request: httpx.Response(200, json={"resourceType": "Patient", "id": "p1"}))
    with pytest.raises(RequestRejected, match="not a Bundle"):
        server.run(lambda fhir: fhir.search_all("Observation", {"patient": "SECRET-MRN"}))


def test_search_page_skips_entries_without_a_resource() -> None:
    page = SearchPage(
        {
            "resourceType": "Bundle",
            "entry": [
                {"fullUrl": "urn:uuid:1"},
                "not an entry",
                {"resource": {"resourceType": "OperationOutcome"}},  # no search.mode: still an outcome
                {"resource": {"resourceType": "Patient", "id": "p1"}},  # no search.mode: a match
            ],
            "link": [{"relation": "next"}, {"relation": "next", "url": "Patient?page=2"}],
            "total": "3",
        }
    )
    assert ids(page.matches) == ["Patient/p1"]
    assert [o["resourceType"] for o in page.outcomes] == ["OperationOutcome"]
    assert page.included == []
    assert page.next_url == "Patient?page=2"
    assert page.total is None


# -- capabilities and read ------------------------------------------------------------------------


def test_capabilities_returns_an_r4_capability_statement() -> None:
    statement = {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1", "status": "active"}
    server = Server(lambda request: httpx.Response(200, json=statement))
    assert server.run(lambda fhir: fhir.capabilities()) == statement
    (request,) = server.requests
    assert request.method == "GET" and str(request.url) == f"{BASE}/metadata"
    assert request.headers["Accept"] == FHIR_JSON


@pytest.mark.parametrize("version", ["5.0.0", "4.3.0", "3.0.2", None])
def test_capabilities_refuses_other_fhir_versions(version: str | None) -> None:
    statement = {"resourceType": "CapabilityStatement", "fhirVersion": version}
    server = Server(lambda request: httpx.Response(200, json=statement))
    with pytest.raises(RequestRejected, match=r"needs R4 \(4\.0\.x\)") as info:
        server.run(lambda fhir: fhir.capabilities())
    assert (version or "unknown version") in str(info.value)


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, json={"resourceType": "OperationOutcome", "issue": []}),
        httpx.Response(200, json={"status": "UP"}),
        httpx.Response(200, json=["CapabilityStatement"]),
        httpx.Response(200, text="<html>Welcome</html>", headers={"Content-Type": "text/html"}),
    ],
    ids=["outcome", "other-json", "json-list", "html"],
)
def test_capabilities_refuses_what_is_not_a_capability_statement(answer: httpx.Response) -> None:
    server = Server(lambda request: answer)
    with pytest.raises(RequestRejected):
        server.run(lambda fhir: fhir.capabilities())


def test_read_gets_type_and_id() -> None:
    server = Server(lambda request: httpx.Response(200, json={"resourceType": "Patient", "id": "123"}))
    assert server.run(lambda fhir: fhir.read("Patient", "123")) == {"resourceType": "Patient", "id": "123"}
    assert str(server.requests[0].url) == f"{BASE}/Patient/123"


def test_read_refuses_a_resource_of_another_type() -> None:
    server = Server(lambda request: httpx.Response(200, json={"resourceType": "Practitioner", "id": "123"}))
    with pytest.raises(RequestRejected, match="returned a 'Practitioner'"):
        server.run(lambda fhir: fhir.read("Patient", "123"))


def test_read_of_a_missing_resource_is_remote_not_found() -> None:
    body = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "diagnostics": "gone"}]}
    server = Server(lambda request: httpx.Response(404, json=body))
    with pytest.raises(RemoteNotFound) as info:
        server.run(lambda fhir: fhir.read("Patient", "123"))
    assert info.value.url == f"{BASE}/Patient/123"
    assert info.value.issues == ("error: gone",)
    assert len(server.requests) == 1


@pytest.mark.parametrize("resource_id", ["../x", "..", ".", "", "a/b", "123?_format=xml", "123#frag"])
def test_read_refuses_ids_that_are_not_one_path_segment(resource_id: str) -> None:
    server = Server(lambda request: httpx.Response(200, json={"resourceType": "Patient"}))
    with pytest.raises(ValueError, match="not a valid URL path segment"):
        server.run(lambda fhir: fhir.read("Patient", resource_id))
    assert server.requests == []


def test_search_refuses_a_resource_type_that_is_not_one_path_segment() -> None:
    server = Server(lambda request: httpx.Response(200, json=bundle()))
    with pytest.raises(ValueError, match="resource type"):
        server.run(lambda fhir: fhir.search_all("../admin"))
    assert server.requests == []


# -- transaction ----------------------------------------------------------------------------------

TRANSACTION = {"resourceType": "Bundle", "type": "transaction", "entry": []}


def test_transaction_posts_the_bundle_to_the_base() -> None:
    response = {"resourceType": "Bundle", "type": "transaction-response", "entry": []}
    server = Server(lambda request: httpx.Response(200, json=response))
    assert server.run(lambda fhir: fhir.transaction(TRANSACTION)) == response
    (request,) = server.requests
    assert request.method == "POST" and str(request.url) == BASE
    assert request.headers["Content-Type"] == FHIR_JSON
    assert request.read() == httpx.Request("POST", BASE, json=TRANSACTION).read()


@pytest.mark.parametrize(
    "body",
    [
        {"resourceType": "Bundle", "type": "collection", "entry": []},
        {"resourceType": "Bundle"},
        {"resourceType": "Patient", "type": "transaction"},
    ],
)
def test_transaction_refuses_what_is_not_a_transaction_bundle(body: dict[str, Any]) -> None:
    server = Server(lambda request: httpx.Response(200, json={}))
    with pytest.raises(ValueError, match="'transaction' or 'batch'"):
        server.run(lambda fhir: fhir.transaction(body))
    assert server.requests == []


def test_transaction_is_not_retried_on_500_but_is_on_503() -> None:
    answers = iter(
        [httpx.Response(500), httpx.Response(503), httpx.Response(200, json={"resourceType": "Bundle"})]
    )
    server = Server(lambda request: next(answers))
    with pytest.raises(ServerFailed):
        server.run(lambda fhir: fhir.transaction(TRANSACTION))
    assert len(server.requests) == 1
    assert server.run(lambda fhir: fhir.transaction(TRANSACTION)) == {"resourceType": "Bundle"}
    assert len(server.requests) == 3


# -- create and update ------------------------------------------------------------------------------

FLAG = {"resourceType": "Flag", "status": "active", "identifier": [{"system": "urn:x", "value": "a|b"}]}


def _echo(status: int, **headers: str) -> Handler:
    def answer(request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)
        body = {**sent, "id": sent.get("id", "f1"), "meta": {"versionId": "3"}}
        return httpx.Response(status, json=body, headers=headers)

    return answer


def test_create_posts_to_the_type_and_says_what_it_made() -> None:
    server = Server(_echo(201))
    written = server.run(lambda fhir: fhir.create(FLAG))
    assert written == Written("Flag", "f1", "3", True, {**FLAG, "id": "f1", "meta": {"versionId": "3"}})
    assert written.reference == "Flag/f1"
    (request,) = server.requests
    assert request.method == "POST" and str(request.url) == f"{BASE}/Flag"
    assert request.headers["Content-Type"] == FHIR_JSON and "If-None-Exist" not in request.headers


def test_conditional_create_sends_the_criteria_as_a_query_in_if_none_exist() -> None:
    server = Server(_echo(200))
    written = server.run(
        lambda fhir: fhir.create(FLAG, if_none_exist={"identifier": "urn:x|a|b", "status": "active"})
    )
    assert written.created is False  # 200: the server already had one
    (request,) = server.requests
    assert parse_qsl(request.headers["If-None-Exist"]) == [("identifier", "urn:x|a|b"), ("status", "active")]
    with pytest.raises(ValueError, match="search criteria"):
        server.run(lambda fhir: fhir.create(FLAG, if_none_exist={}))


def test_a_plain_create_is_not_retried_on_500_but_a_conditional_one_is() -> None:
    answers = iter([httpx.Response(500), httpx.Response(500), _echo(201)])

    def handler(request: httpx.Request) -> httpx.Response:
        answer = next(answers)
        return answer(request) if callable(answer) else answer

    server = Server(handler)
    with pytest.raises(ServerFailed):
        server.run(lambda fhir: fhir.create(FLAG))
    assert len(server.requests) == 1
    assert server.run(lambda fhir: fhir.create(FLAG, if_none_exist={"identifier": "urn:x|a"})).created
    assert len(server.requests) == 3


def test_create_reads_the_location_when_the_server_returns_no_body() -> None:
    location = f"{BASE}/Flag/f9/_history/2"
    server = Server(lambda request: httpx.Response(201, headers={"Location": location}))
    assert server.run(lambda fhir: fhir.create(FLAG)) == Written("Flag", "f9", "2", True, None)
    server = Server(lambda request: httpx.Response(201))
    with pytest.raises(RequestRejected, match="neither a resource nor a Location"):
        server.run(lambda fhir: fhir.create(FLAG))


def test_update_puts_at_type_and_id() -> None:
    server = Server(_echo(201))
    written = server.run(lambda fhir: fhir.update({**FLAG, "id": "chosen-1"}))
    assert (written.reference, written.created) == ("Flag/chosen-1", True)
    (request,) = server.requests
    assert request.method == "PUT" and str(request.url) == f"{BASE}/Flag/chosen-1"


@pytest.mark.parametrize(
    "resource", [FLAG, {**FLAG, "id": "a/b"}, {"id": "x"}, {"resourceType": "Fl/ag", "id": "x"}]
)
def test_update_refuses_a_resource_without_a_usable_type_and_id(resource: dict[str, Any]) -> None:
    server = Server(_echo(200))
    with pytest.raises(ValueError):
        server.run(lambda fhir: fhir.update(resource))
    assert server.requests == []


# -- the client itself ----------------------------------------------------------------------------


def test_requests_counts_every_interaction() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/fhir/Patient/p1":
            return httpx.Response(200, json={"resourceType": "Patient", "id": "p1"})
        return three_pages(request)

    async def interactions(fhir: FhirClient) -> list[int]:
        counts = [fhir.requests]
        await fhir.search_all("Observation")
        counts.append(fhir.requests)
        await fhir.read("Patient", "p1")
        counts.append(fhir.requests)
        return counts

    assert Server(handler).run(interactions) == [0, 3, 4]


def test_concurrent_requests_stay_within_max_concurrency() -> None:
    in_flight = 0
    most = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return httpx.Response(200, json={"resourceType": "Patient", "id": request.url.path.rsplit("/", 1)[1]})

    async def many(fhir: FhirClient) -> list[dict[str, Any]]:
        return await asyncio.gather(*(fhir.read("Patient", str(n)) for n in range(6)))

    server = Server(slow)  # type: ignore[arg-type]  # MockTransport awaits an async handler
    found = server.run(many, max_concurrency=2)
    assert [p["id"] for p in found] == [str(n) for n in range(6)]
    assert most == 2


def test_credentials_and_extra_headers_are_sent() -> None:
    server = Server(lambda request: httpx.Response(200, json={"resourceType": "Patient", "id": "1"}))
    server.run(lambda fhir: fhir.read("Patient", "1"), credentials=Credentials(token="tok-1"))
    server.run(
        lambda fhir: fhir.read("Patient", "1"),
        credentials=Credentials(username="ann", password="pw"),
        headers={"X-Request-Id": "r-1"},
    )
    bearer, basic = server.requests
    assert bearer.headers["Authorization"] == "Bearer tok-1"
    assert basic.headers["Authorization"] == "Basic " + base64.b64encode(b"ann:pw").decode()
    assert basic.headers["X-Request-Id"] == "r-1"
    assert basic.headers["Accept"] == FHIR_JSON


def test_base_url_must_be_http_and_is_redacted_in_the_message() -> None:
    with pytest.raises(ValueError, match="must start with http") as info:
        FhirClient("ftp://ann:SECRET-PW@ehr.example.org/fhir?x=1")
    assert "SECRET-PW" not in str(info.value)


def test_credentials_in_the_base_url_never_appear_in_errors() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"resourceType": "Patient"}))

    async def go() -> None:
        async with FhirClient("https://ann:SECRET-PW@ehr.example.org/fhir", transport=transport) as fhir:
            await fhir.capabilities()

    with pytest.raises(RequestRejected) as info:
        asyncio.run(go())
    assert "SECRET-PW" not in str(info.value)
    assert "SECRET-PW" not in (info.value.url or "")
