"""The service of ``crosscheck serve``: CDS Hooks 2.0.1, the REST decision-support API, ingest,
health and metrics, on FastAPI (`create_app`)."""

from plugin.service.app import create_app

__all__ = ["create_app"]
