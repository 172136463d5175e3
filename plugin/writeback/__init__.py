"""Write-back of results where clinicians and PACS viewers see them: a FHIR ``DetectedIssue``
(and ``RiskAssessment``) to the FHIR server, a DICOM Structured Report to the PACS.

- `plugin.writeback.fhir`: `detected_issue`, `risk_assessment`, and their idempotent
  write (`write_detected_issue`, `write_risk_assessment`, `WriteMode`);
- `plugin.writeback.sr`: `structured_report` (TID 1500, with the `TamperHeatmap`'s
  hottest region), `encode_structured_report`, `store_structured_report` (STOW-RS);
- `plugin.writeback.codes`: the codes both use; `plugin.writeback.algorithm`: how
  they name the model.
"""

from plugin.writeback.fhir import (
    WriteMode,
    detected_issue,
    risk_assessment,
    write_detected_issue,
    write_risk_assessment,
)
from plugin.writeback.sr import (
    TamperHeatmap,
    encode_structured_report,
    store_structured_report,
    structured_report,
)

__all__ = [
    "TamperHeatmap",
    "WriteMode",
    "detected_issue",
    "encode_structured_report",
    "risk_assessment",
    "store_structured_report",
    "structured_report",
    "write_detected_issue",
    "write_risk_assessment",
]
