"""What is kept of a scored study besides its result, for the review page and case reports.

Under the service's data folder (``--data-dir``):

- ``images/<StudyInstanceUID>/``: the study's DICOM files, so the page can show its pixels
  after an upload's folder is gone, a swept folder has moved, or the PACS has changed;
- ``heatmaps/<result id>.json``: the tamper heatmap with the frame it lies on
  (`fusion.explain.heatmap_placement`), which the page draws as an overlay;
- ``heatmaps/<result id>.png``: the model's heatmap figure (the service draws it; a sweep
  does not, to keep its cores for reading).

The service keeps them for every study it scores, a sweep for the studies it flags (those
that become cases). Writes go to a ``.partial`` name first and are renamed, so a reader
never sees half a file.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from connectors.domain import Case, Study
from fusion.explain import heatmap_placement, write_heatmap_png
from fusion.features import FeatureConfig

__all__ = ["KeptEvidence"]

logger = logging.getLogger(__name__)


class KeptEvidence:
    """The images and heatmaps kept under ``data_dir`` (see the module docstring)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)

    def images_path(self, study_instance_uid: str) -> Path:
        folder = self.data_dir / "images" / study_instance_uid
        if folder.parent != self.data_dir / "images":
            raise ValueError(f"{study_instance_uid!r} is not a StudyInstanceUID")
        return folder

    def heatmap_path(self, result_id: str) -> Path:
        return self.data_dir / "heatmaps" / f"{result_id}.png"

    def heatmap_data_path(self, result_id: str) -> Path:
        """The heatmap as data (`fusion.explain.heatmap_placement`), JSON."""
        return self.data_dir / "heatmaps" / f"{result_id}.json"

    def keep_study(self, study: Study) -> Path:
        """Copy a study's files under ``images/<StudyInstanceUID>/`` (replacing what was kept for
        it); the folder. Blocking: call it off an event loop."""
        return self.keep_files(study.study_instance_uid, (i.path for i in study.instances if i.path))

    def keep_files(self, study_instance_uid: str, files: Iterable[Path]) -> Path:
        """Copy one study's files under ``images/<StudyInstanceUID>/`` (replacing what was kept)."""
        folder = self.images_path(study_instance_uid)
        tmp = folder.with_name(folder.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for n, path in enumerate(files):
            shutil.copyfile(path, tmp / f"{n:05d}.dcm")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        return folder

    def keep_heatmap(
        self,
        case: Case,
        heatmap_logits: NDArray[np.float32],
        result_id: str,
        *,
        config: FeatureConfig,
    ) -> None:
        """The heatmap's figure and data for a result; a study without decodable pixels gets none
        (logged, never raised: the result stands without it)."""
        try:
            write_heatmap_png(case, heatmap_logits, self.heatmap_path(result_id), config=config)
            placement = heatmap_placement(case, heatmap_logits, config=config)
            if placement is not None:
                self.keep_heatmap_data(result_id, placement)
        except (OSError, ValueError) as exc:
            logger.warning("no heatmap for result %s (%s)", result_id, type(exc).__name__)

    def keep_heatmap_data(self, result_id: str, placement: Mapping[str, Any]) -> None:
        """Write a result's heatmap data (`fusion.explain.heatmap_placement`)."""
        target = self.heatmap_data_path(result_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial_file = target.with_suffix(".json.partial")
        partial_file.write_text(json.dumps(placement, separators=(",", ":")))
        partial_file.replace(target)
