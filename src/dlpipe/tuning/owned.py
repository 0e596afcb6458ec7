"""Storages that create every trial with its owner (`dlpipe:owner`: host, pid, process start time).

The owner is part of the record that creates the trial (one journal line, one database transaction), so no trial
ever exists without it: a process killed right after `study.ask()` leaves a trial that the next worker finds
orphaned at once, instead of one it can judge only by a heartbeat that must age (`STALE_SECONDS`).
"""

from __future__ import annotations

from datetime import datetime

from optuna.storages import RDBStorage
from optuna.storages.journal import JournalStorage
from optuna.trial import FrozenTrial, TrialState

from dlpipe.processes import Owner

ATTR_OWNER = "dlpipe:owner"


def owned_template() -> FrozenTrial:
    """A new RUNNING trial, as Optuna creates one, owned by this process."""
    return FrozenTrial(
        number=-1,
        state=TrialState.RUNNING,
        value=None,
        datetime_start=datetime.now(),  # what Optuna's RDB storage stores; the journal stores it in UTC
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs={},
        system_attrs={ATTR_OWNER: Owner.current().record()},
        intermediate_values={},
        trial_id=-1,
    )


class OwnedJournalStorage(JournalStorage):
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return super().create_new_trial(study_id, template_trial or owned_template())


class OwnedRDBStorage(RDBStorage):
    # Optuna's cache in front of an RDB storage calls this method, not create_new_trial
    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        return super()._create_new_trial(study_id, template_trial or owned_template())
