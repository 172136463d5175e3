"""The disposition form's fabrication kind, over plain HTTP: offered, saved, shown again, corrected."""

from __future__ import annotations

import re

import httpx
import pytest

from plugin.store import CaseQueue, FabricationKind, Store
from tests.plugin.review.conftest import Flagged, csrf_of, login

pytestmark = pytest.mark.slow


def _version(page: str) -> str:
    found = re.search(r'name="version" value="(\d+)"', page)
    assert found
    return found.group(1)


def _selected_kind(page: str) -> str | None:
    select = re.search(r'<select name="fabrication_kind">(.*?)</select>', page, re.S)
    assert select, "the disposition form offers no fabrication kind"
    chosen = re.search(r'<option value="([^"]*)" selected', select.group(1))
    return None if chosen is None else chosen.group(1)


def test_the_disposition_form_takes_the_fabrication_kind(flagged: Flagged) -> None:
    case = f"/review/cases/{flagged.case_id}"
    with httpx.Client(base_url=flagged.url, timeout=60, follow_redirects=False) as http:
        login(http)
        page = http.get(case).text
        for kind in FabricationKind:
            assert f'<option value="{kind.value}"' in page and kind.description in page
        assert _selected_kind(page) is None

        def post(page: str, **fields: str) -> httpx.Response:
            data = {"csrf_token": csrf_of(page), "version": _version(page), **fields}
            return http.post(f"{case}/disposition", data=data)

        saved = post(
            page, status="confirmed-fabricated", note="generated pixels", fabrication_kind="synthetic"
        )
        assert saved.status_code == 303
        page = http.get(case).text
        assert _selected_kind(page) == "synthetic"
        assert "fabrication_kind" in page  # the event in the history

        refused = post(page, status="confirmed-fabricated", fabrication_kind="tampered")  # no note
        assert refused.status_code == 422 and "needs a note" in refused.text
        assert _selected_kind(refused.text) == "tampered"  # the form keeps what was sent

        bad = post(page, status="confirmed-fabricated", fabrication_kind="gan", note="n")
        assert bad.status_code == 422 and "fabrication_kind must be one of" in bad.text

        # a reopening with the old kind still selected: the kind goes with the disposition
        reopened = post(page, status="in-review", note="new evidence", fabrication_kind="synthetic")
        assert reopened.status_code == 303
        assert _selected_kind(http.get(case).text) is None
    with Store.open(f"sqlite:///{flagged.data_dir / 'crosscheck.db'}") as store:
        stored = CaseQueue(store).case(flagged.case_id)
        assert stored is not None and stored.fabrication_kind is None
        kinds = [
            e.new
            for e in CaseQueue(store).history(flagged.case_id)
            if getattr(e, "field", None) == "fabrication_kind"
        ]
    assert kinds == ["synthetic", None]
