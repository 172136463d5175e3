"""Write-back of results where clinicians and PACS viewers see them: a FHIR ``DetectedIssue``
(and ``RiskAssessment``) to the FHIR server, a DICOM Structured Report to the PACS."""

__all__: list[str] = []
