"""The MLflow model registry with aliases: register the selected model, move `champion` only when it is earned.

- `register_challenger` makes the winner's logged model a new version of the registered model (or reuses the
  version already made from the same logged model), tags it and points alias `challenger` at it.
- `promote` moves alias `champion` to a version if its score beats the current champion's (a tie does not), if
  there is no champion yet, or when forced. `score(version)` is supplied by the caller: the CLI and the select
  stage re-evaluate both versions on the current held-out test set.
- Every move is recorded: tags on the version (`promoted_at`, `previous_champion`, both scores, `promoted_by`,
  `promotion_forced`), a JSON stack of champions on the registered model (`champion_history`, the last one is the
  champion) and a JSON audit list (`champion_audit`, also refusals and rollbacks).
- `rollback` pops the stack and returns `champion` to the version before; it works repeatedly, down to the first
  champion.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from dlpipe.errors import RegistryError

log = logging.getLogger(__name__)
CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"
AUDIT_TAG = "champion_audit"
AUDIT_KEEP = 200  # audit records kept on the registered model (oldest dropped)
SOURCE_TAG = "model_id"  # the logged model a version was made from


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def client() -> MlflowClient:
    return MlflowClient()


def get_alias(name: str, alias: str) -> ModelVersion | None:
    """The version `alias` points at, or None (also when the registered model does not exist)."""
    try:
        return client().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def get_version(name: str, version: int | str) -> ModelVersion:
    try:
        return client().get_model_version(name, str(version))
    except MlflowException:
        raise RegistryError(f"registered model {name!r} has no version {version}") from None


def register_challenger(
    name: str, model_uri: str, model_id: str | None, tags: dict[str, str], description: str | None = None
) -> ModelVersion:
    """Register `model_uri` as a version of `name` (reusing one made from the same logged model), alias challenger."""
    c = client()
    version = _version_from(name, model_id) if model_id else None
    if version is None:
        try:
            c.get_registered_model(name)
        except MlflowException:
            c.create_registered_model(name, description="dlpipe: the selected model of each pipeline run")
        all_tags = {**tags, **({SOURCE_TAG: model_id} if model_id else {})}
        version = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in all_tags.items()})
        log.info("registered %s version %s from %s", name, version.version, model_uri)
    else:
        for key, value in tags.items():
            c.set_model_version_tag(name, version.version, key, str(value))
        log.info("%s version %s already holds %s; reusing it", name, version.version, model_uri)
    if description:
        c.update_model_version(name, version.version, description=description)
    c.set_registered_model_alias(name, CHALLENGER, version.version)
    c.set_model_version_tag(name, version.version, "challenger_since", now())
    return c.get_model_version(name, version.version)


def _version_from(name: str, model_id: str) -> ModelVersion | None:
    try:
        found = client().search_model_versions(f"name = '{name}' and tags.{SOURCE_TAG} = '{model_id}'")
    except MlflowException:
        return None
    return max(found, key=lambda v: int(v.version)) if found else None


@dataclass
class Decision:
    """The outcome of a promotion request or rollback."""

    action: str  # promoted | refused | unchanged | rolled_back
    name: str
    version: int
    previous: int | None
    metric: str | None = None
    score: float | None = None
    previous_score: float | None = None
    forced: bool = False
    message: str = ""

    @property
    def promoted(self) -> bool:
        return self.action in ("promoted", "rolled_back")

    def to_dict(self) -> dict:
        return asdict(self)


def history(name: str) -> list[int]:
    """Past and present champions, oldest first; the last one is the current champion."""
    try:
        tags = client().get_registered_model(name).tags
    except MlflowException:
        return []
    try:
        return [int(v) for v in json.loads(tags.get(HISTORY_TAG, "[]"))]
    except (ValueError, TypeError):
        return []


def audit(name: str) -> list[dict]:
    try:
        return json.loads(client().get_registered_model(name).tags.get(AUDIT_TAG, "[]"))
    except (MlflowException, ValueError):
        return []


def _record(name: str, entry: dict, stack: list[int] | None = None) -> None:
    c = client()
    records = [*audit(name), entry][-AUDIT_KEEP:]
    c.set_registered_model_tag(name, AUDIT_TAG, json.dumps(records))
    if stack is not None:
        c.set_registered_model_tag(name, HISTORY_TAG, json.dumps(stack))


def _float(value: str | None) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


def _fmt(score: float | None) -> str:
    return "n/a" if score is None or (isinstance(score, float) and math.isnan(score)) else f"{score:.4f}"


def promote(
    name: str,
    version: int | str | None = None,
    *,
    metric: str,
    score: Callable[[ModelVersion], float] | None = None,
    force: bool = False,
    actor: str = "dlpipe promote",
) -> Decision:
    """Move `champion` to `version` (default: the `challenger`) if it beats the champion on `metric`.

    `score(version)` evaluates a version on the held-out test set; it is only called when there is a champion to
    beat and the move is not forced. A tie does not promote. The move (or the refusal) is recorded.
    """
    c = client()
    if version is None:
        candidate = get_alias(name, CHALLENGER)
        if candidate is None:
            raise RegistryError(f"registered model {name!r} has no version with alias {CHALLENGER!r}; run select first")
    else:
        candidate = get_version(name, version)
    new = int(candidate.version)
    champion = get_alias(name, CHAMPION)
    old = int(champion.version) if champion else None
    stack = history(name)
    if old is not None and (not stack or stack[-1] != old):
        stack.append(old)  # the alias was moved outside dlpipe: keep it as the state to roll back to
    if old == new:
        return Decision("unchanged", name, new, old, metric, message=f"{name} version {new} is already {CHAMPION}")
    new_score = old_score = None
    if champion is not None and not force:
        if score is None:
            raise RegistryError("promotion needs a way to score both versions (or --force)")
        new_score, old_score = score(candidate), score(champion)
        if not new_score > old_score:
            message = (
                f"not promoted: {name} version {new} {metric} {_fmt(new_score)} does not beat {CHAMPION} version "
                f"{old} {metric} {_fmt(old_score)} on the held-out test set"
            )
            c.set_model_version_tag(name, str(new), "promotion_refused_at", now())
            c.set_model_version_tag(name, str(new), "promotion_refused", message)
            _record(name, {"at": now(), "action": "refused", "version": new, "champion": old, "metric": metric,
                           "score": new_score, "champion_score": old_score, "by": actor})  # fmt: skip
            return Decision("refused", name, new, old, metric, new_score, old_score, force, message)
    elif champion is None:
        new_score = _float(candidate.tags.get(f"test_{metric}"))  # recorded by select, for the record only
    c.set_registered_model_alias(name, CHAMPION, str(new))
    stamp = now()
    tags = {
        "promoted_at": stamp,
        "promoted_by": actor,
        "previous_champion": str(old) if old is not None else "none",
        "promotion_metric": metric,
        "promotion_score": _fmt(new_score),
        "previous_champion_score": _fmt(old_score),
        "promotion_forced": str(force).lower(),
    }
    for key, value in tags.items():
        c.set_model_version_tag(name, str(new), key, value)
    if old is not None:
        c.set_model_version_tag(name, str(old), "replaced_at", stamp)
        c.set_model_version_tag(name, str(old), "replaced_by", str(new))
    stack.append(new)
    _record(name, {"at": stamp, "action": "promoted", "version": new, "previous": old, "metric": metric,
                   "score": new_score, "previous_score": old_score, "forced": force, "by": actor}, stack)  # fmt: skip
    if old is None:
        message = f"promoted: {name} version {new} is now {CHAMPION} (there was none)"
    elif force:
        message = f"promoted (forced): {name} version {new} is now {CHAMPION}, replacing version {old}"
    else:
        message = (
            f"promoted: {name} version {new} {metric} {_fmt(new_score)} beats version {old} {metric} "
            f"{_fmt(old_score)}; version {new} is now {CHAMPION}"
        )
    log.info(message)
    return Decision("promoted", name, new, old, metric, new_score, old_score, force, message)


def rollback(name: str, actor: str = "dlpipe promote --rollback") -> Decision:
    """Return `champion` to the version it replaced (repeatable, down to the first champion)."""
    c = client()
    champion = get_alias(name, CHAMPION)
    if champion is None:
        raise RegistryError(f"registered model {name!r} has no {CHAMPION}; nothing to roll back")
    current = int(champion.version)
    stack = history(name)
    if not stack or stack[-1] != current:
        stack.append(current)
    if len(stack) < 2:
        raise RegistryError(f"{name} version {current} is the first {CHAMPION}; there is no previous one to restore")
    stack.pop()
    target = stack[-1]
    get_version(name, target)  # still exists?
    c.set_registered_model_alias(name, CHAMPION, str(target))
    stamp = now()
    c.set_model_version_tag(name, str(current), "rolled_back_at", stamp)
    c.set_model_version_tag(name, str(current), "rolled_back_to", str(target))
    c.set_model_version_tag(name, str(target), "restored_at", stamp)
    c.set_model_version_tag(name, str(target), "restored_from", str(current))
    _record(name, {"at": stamp, "action": "rolled_back", "version": target, "previous": current, "by": actor}, stack)
    message = f"rolled back: {name} version {target} is {CHAMPION} again (was version {current})"
    log.info(message)
    return Decision("rolled_back", name, target, current, message=message)
