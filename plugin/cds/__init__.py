"""CDS Hooks 2.0.1: the services the EHR calls, their prefetch, cards and feedback, and the
authentication of CDS clients (see ``shared/cdshooks_v201.md``)."""

__all__: list[str] = []
