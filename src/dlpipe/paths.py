"""Where the pipeline reads and writes, relative to the project root."""

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

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def mlruns(self) -> Path:
        return self.root / "mlruns"

    @property
    def optuna(self) -> Path:
        return self.root / "optuna"
