"""``crosscheck sweep``: batch scoring of a folder of studies, or of a PACS's, locally or on Ray, resumable.

`units_from_folder` lists the studies of a folder (`SweepUnit`), `units_from_servers` those of
a PACS that a `StudySelection` picks (each linked to its record on the FHIR server),
`run_sweep` scores those not yet stored and writes each result to the plugin's `Store` as it
comes, `export_results` writes them as Parquet or CSV. Readers (`plugin.sweep.prepare`) decode
and preprocess in worker processes or Ray tasks; the model (`SweepScorer`) runs batched in the
main process or a Ray actor.
"""

from plugin.sweep.export import export_results
from plugin.sweep.run import SweepReport, run_sweep
from plugin.sweep.scoring import SweepScorer
from plugin.sweep.servers import ServerStudy, StudySelection, units_from_servers
from plugin.sweep.units import FolderSweep, SweepUnit, units_from_folder

__all__ = [
    "FolderSweep",
    "ServerStudy",
    "StudySelection",
    "SweepReport",
    "SweepScorer",
    "SweepUnit",
    "export_results",
    "run_sweep",
    "units_from_folder",
    "units_from_servers",
]
