"""Where the pipeline reads and writes, relative to the project root: the one place output paths are named.

dvc.yaml declares the same paths (tests/unit/test_dvc_yaml.py keeps the two in step).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProjectPaths:
    root: Path

    @classmethod
    def from_env(cls) -> ProjectPaths:
        """The project root: $DLPIPE_ROOT, else the working directory (DVC runs stages from the root)."""
        return cls(Path(os.environ.get("DLPIPE_ROOT", ".")).resolve())

    # --- inputs and data ------------------------------------------------------------------------------------------
    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def inputs(self) -> Path:
        """Written by the check stage: fingerprints of input files that params only name (a CSV's contents)."""
        return self.root / "data" / "inputs.json"

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def downloads(self) -> Path:
        """Downloaded and user-copied dataset files (torchvision's layout), read by fetch. Never a stage output, so
        DVC never deletes what is here (it deletes data/raw before every fetch)."""
        return self.root / "data" / "downloads"

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    # --- the study --------------------------------------------------------------------------------------------------
    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def tuning_report(self, arch: str) -> Path:
        return self.reports / "tuning" / f"{arch}.json"

    def cv_report(self, arch: str) -> Path:
        return self.reports / "cv" / f"{arch}.json"

    def oof_predictions(self, arch: str) -> Path:
        """Out-of-fold class probabilities of every cross-validation fold."""
        return self.reports / "cv" / f"{arch}.oof.csv"

    def test_report(self, arch: str) -> Path:
        return self.reports / "test" / f"{arch}.json"

    def test_predictions(self, arch: str) -> Path:
        return self.reports / "test" / f"{arch}.predictions.csv"

    def model_dir(self, arch: str) -> Path:
        return self.models / arch

    @property
    def tuned_params(self) -> Path:
        """Every architecture's tuned hyperparameters, as a params file DVC shows beside params.yaml."""
        return self.reports / "tuned.yaml"

    @property
    def baselines_report(self) -> Path:
        return self.reports / "baselines.json"

    # --- select -----------------------------------------------------------------------------------------------------
    @property
    def leaderboard_csv(self) -> Path:
        return self.reports / "leaderboard.csv"

    @property
    def leaderboard_md(self) -> Path:
        return self.reports / "leaderboard.md"

    @property
    def selection(self) -> Path:
        return self.reports / "selection.json"

    @property
    def metrics(self) -> Path:
        return self.reports / "metrics.json"

    @property
    def plots(self) -> Path:
        return self.reports / "plots"

    # --- stores -------------------------------------------------------------------------------------------------------
    @property
    def mlruns(self) -> Path:
        return self.root / "mlruns"

    @property
    def optuna(self) -> Path:
        return self.root / "optuna"
