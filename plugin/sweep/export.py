"""``crosscheck sweep --export FILE``: one row per study, as Parquet (pyarrow) or CSV.

Columns: ``study_instance_uid``, ``patient_id``, ``accession_number``, the scores
(``overall``, ``consistency``, ``synthetic``), ``threshold``, ``flagged``,
``top_findings`` (the codes of the three most severe findings, ``;``-separated),
``model_name``, ``model_version``, ``model_sha256``, ``result_id`` and ``created_at``
(ISO 8601, UTC); sorted by ``overall``, highest first.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plugin.errors import UsageError
from plugin.store import StoredResult

__all__ = ["COLUMNS", "TOP_FINDINGS", "export_results", "export_rows"]

COLUMNS: tuple[str, ...] = (
    "study_instance_uid",
    "patient_id",
    "accession_number",
    "overall",
    "consistency",
    "synthetic",
    "threshold",
    "flagged",
    "top_findings",
    "model_name",
    "model_version",
    "model_sha256",
    "result_id",
    "created_at",
)

#: How many finding codes ``top_findings`` lists.
TOP_FINDINGS = 3


def export_rows(results: Sequence[StoredResult]) -> list[dict[str, Any]]:
    """One row per stored result, highest ``overall`` first."""
    rows = []
    for stored in results:
        r = stored.result
        rows.append(
            {
                "study_instance_uid": r.case.study_instance_uid,
                "patient_id": r.case.patient_id,
                "accession_number": r.case.accession_number,
                "overall": r.scores.overall,
                "consistency": r.scores.consistency,
                "synthetic": r.scores.synthetic,
                "threshold": r.threshold,
                "flagged": r.flagged,
                "top_findings": ";".join(f.code for f in r.findings[:TOP_FINDINGS]),
                "model_name": None if r.model is None else r.model.name,
                "model_version": None if r.model is None else r.model.version,
                "model_sha256": None if r.model is None else r.model.sha256,
                "result_id": stored.id,
                "created_at": stored.created_at.isoformat(),
            }
        )
    return sorted(rows, key=lambda row: (-row["overall"], row["study_instance_uid"]))


def export_results(results: Sequence[StoredResult], path: Path) -> int:
    """Write ``path`` (``.parquet`` or ``.csv``); the number of rows."""
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise UsageError(f"--export {path}: give a .parquet or .csv file name")
    rows = export_rows(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        return len(rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            (
                name,
                pa.float64() if name in {"overall", "consistency", "synthetic", "threshold"} else pa.string(),
            )
            for name in COLUMNS
            if name != "flagged"
        ]
        + [("flagged", pa.bool_())]
    )
    table = pa.Table.from_pylist(rows, schema=schema).select(list(COLUMNS))
    pq.write_table(table, path)
    return len(rows)
