"""The MLflow model registry with aliases: register the selected model, move `champion` only when it is earned.

- `register_challenger` makes the winner's logged model a new version of the registered model (or reuses the
  version already made from the same logged model), tags it and points alias `challenger` at it.
- `promote` moves alias `champion` to a version if its score beats the current champion's (a tie does not), if
  there is no champion yet, or when forced. `score(version)` is supplied by the caller: the CLI and the select
  stage re-evaluate both versions on the held-out test set both were held out on. When it raises `NotComparable`,
  nothing moves and the outcome is `not_compared`: the reason and the command that promotes all the same.
- Every move is recorded: tags on the version (`promoted_at`, `previous_champion`, both scores, `promoted_by`,
  `promotion_forced`), a JSON stack of champions on the registered model (`champion_history`, the last one is the
  champion) and a JSON audit list (`champion_audit`, also refusals and rollbacks).
- `rollback` pops the stack and returns `champion` to the version before; it works repeatedly, down to the first
  champion.

Crash safety: a move of `champion` (promotion or rollback) first records its whole plan on the registered model
(tag `champion_pending`: the version tags, the audit entry and the history to write), then moves the alias, then
writes the record and removes the plan; every step of the record is idempotent. `recover` (run first by every
promote, rollback and registration) finishes a plan whose alias move happened, discards one whose move did not
(with an `abandoned` audit entry), and adopts a champion moved by anything else into the history (`adopted`).
For fault tests, $DLPIPE_TEST_KILL_AT=<promote|rollback>:<step> SIGKILLs the process at that step (`KILL_STEPS`).

Names the user gives that do not exist (a registered model, a version, an alias) raise `NotInRegistryError`
(bad input, exit 2) naming what does exist.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from dlpipe.errors import BadInputError, RegistryError

log = logging.getLogger(__name__)
CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"
AUDIT_TAG = "champion_audit"
PENDING_TAG = "champion_pending"  # the plan of a champion move whose record is not complete yet
AUDIT_KEEP = 200  # audit records kept on the registered model (oldest dropped)
SOURCE_TAG = "model_id"  # the logged model a version was made from
KILL_ENV = "DLPIPE_TEST_KILL_AT"
KILL_STEPS = ("intent_recorded", "alias_moved", "version_tags_set", "audit_recorded")
LIST_MAX = 20  # names listed in one error line


class NotInRegistryError(BadInputError):
    """A registered model, version or alias that the user named does not exist (the message lists what does)."""


class NotComparable(RegistryError):
    """Raised by a `score` callback: the two versions cannot be compared fairly (the text says why, as the end of
    "version N and champion version M ..."). `promote` then leaves the champion and the decision to the user."""


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


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:LIST_MAX])
    return shown + (f", ... ({len(items) - LIST_MAX} more)" if len(items) > LIST_MAX else "")


def registered_model_names() -> list[str]:
    c, names, token = client(), [], None
    while True:
        page = c.search_registered_models(page_token=token)
        names += [m.name for m in page]
        token = page.token
        if not token:
            return sorted(names)


def require_model(name: str) -> None:
    """NotInRegistryError naming the registered models when `name` is not one of them."""
    try:
        client().get_registered_model(name)
    except MlflowException:
        names = registered_model_names()
        known = f"registered models: {_listed(names)}" if names else "there are none yet; run the select stage first"
        raise NotInRegistryError(f"no registered model {name!r} in the MLflow store; {known}") from None


def version_numbers(name: str) -> list[int]:
    return sorted(int(v.version) for v in client().search_model_versions(f"name = '{name}'"))


def aliases_of(name: str) -> dict[str, int]:
    return {a: int(v) for a, v in client().get_registered_model(name).aliases.items()}


def _versions_text(name: str) -> str:
    versions = [str(v) for v in version_numbers(name)]
    return f"versions: {_listed(versions)}" if versions else "it has no versions"


def _aliases_text(name: str) -> str:
    aliases = aliases_of(name)
    listed = [f"{a} (version {v})" for a, v in sorted(aliases.items())]
    return f"aliases: {_listed(listed)}" if listed else "it has no aliases"


def get_version(name: str, version: int | str) -> ModelVersion:
    """The version, or NotInRegistryError naming the model's versions (or the registered models)."""
    try:
        return client().get_model_version(name, str(version))
    except MlflowException:
        require_model(name)
        raise NotInRegistryError(
            f"registered model {name!r} has no version {version}; {_versions_text(name)}"
        ) from None


def require_alias(name: str, alias: str) -> ModelVersion:
    """The version `alias` points at, or NotInRegistryError naming the model's aliases."""
    found = get_alias(name, alias)
    if found is None:
        require_model(name)
        raise NotInRegistryError(f"registered model {name!r} has no alias {alias!r}; {_aliases_text(name)}")
    return found


_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")


def check_model_uri(uri: str) -> None:
    """For `models:/<name>@<alias>` and `models:/<name>/<version>`: NotInRegistryError if it names nothing."""
    match = _REGISTRY_URI.match(uri)
    if match is None:
        return
    if match["alias"] is not None:
        require_alias(match["name"], match["alias"])
    else:
        get_version(match["name"], match["version"])


def register_challenger(
    name: str, model_uri: str, model_id: str | None, tags: dict[str, str], description: str | None = None
) -> ModelVersion:
    """Register `model_uri` as a version of `name` (reusing one made from the same logged model), alias challenger."""
    c = client()
    recover(name)
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

    action: str  # promoted | refused | not_compared | unchanged | rolled_back
    name: str
    version: int
    previous: int | None
    metric: str | None = None
    score: float | None = None
    previous_score: float | None = None
    forced: bool = False
    message: str = ""
    recovered: str | None = None  # what `recover` completed or discarded before this operation

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


def _append_audit(name: str, entry: dict) -> None:
    """Add `entry` to the audit list unless an entry with its id is there already (idempotent)."""
    records = audit(name)
    if entry.get("id") is None or all(r.get("id") != entry["id"] for r in records):
        client().set_registered_model_tag(name, AUDIT_TAG, json.dumps([*records, entry][-AUDIT_KEEP:]))


def _entry(action: str, **fields) -> dict:
    return {"id": uuid.uuid4().hex[:12], "at": now(), "action": action, **fields}


def _kill_point(kind: str, step: str) -> None:
    """Fault injection for tests: SIGKILL this process at `step` when $DLPIPE_TEST_KILL_AT is `<kind>:<step>`."""
    if os.environ.get(KILL_ENV) == f"{kind}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def _move_champion(name: str, plan: dict) -> None:
    """Record the plan, move alias champion, write the record, drop the plan (see the module docstring)."""
    c = client()
    c.set_registered_model_tag(name, PENDING_TAG, json.dumps(plan))
    _kill_point(plan["kind"], "intent_recorded")
    c.set_registered_model_alias(name, CHAMPION, str(plan["version"]))
    _kill_point(plan["kind"], "alias_moved")
    _finish(name, plan)


def _finish(name: str, plan: dict) -> None:
    c = client()
    for version, tags in plan["version_tags"].items():
        for key, value in tags.items():
            c.set_model_version_tag(name, str(version), key, str(value))
    _kill_point(plan["kind"], "version_tags_set")
    _append_audit(name, plan["audit"])
    _kill_point(plan["kind"], "audit_recorded")
    c.set_registered_model_tag(name, HISTORY_TAG, json.dumps(plan["history"]))
    c.delete_registered_model_tag(name, PENDING_TAG)


@dataclass
class Recovery:
    """What `recover` did: a line for the user, and the plan whose record it completed (if it did)."""

    note: str
    completed: dict | None = None


def recover(name: str) -> Recovery | None:
    """Complete or discard an interrupted champion move, adopt a champion moved outside dlpipe (None: all in order)."""
    c = client()
    try:
        model = c.get_registered_model(name)
    except MlflowException:
        return None
    champion = model.aliases.get(CHAMPION)
    champion = int(champion) if champion is not None else None
    notes, completed = [], None
    raw = model.tags.get(PENDING_TAG)
    if raw is not None:
        try:
            plan = json.loads(raw)
            version, kind = int(plan["version"]), str(plan["kind"])
        except (ValueError, TypeError, KeyError):
            plan, version, kind = None, None, "change"
        what = f"interrupted {'promotion' if kind == 'promote' else kind} of version {version} to {CHAMPION}"
        if plan is not None and champion == version:
            _finish(name, plan)
            completed = plan
            notes.append(f"completed the record of the {what}")
        else:
            _append_audit(name, _entry("abandoned", version=version, champion=champion, kind=kind, by="dlpipe"))
            c.delete_registered_model_tag(name, PENDING_TAG)
            notes.append(f"discarded the {what} (the alias had not moved)")
    stack = history(name)
    if champion is not None and (not stack or stack[-1] != champion):
        previous = stack[-1] if stack else None
        by = "dlpipe (champion moved without a dlpipe record)"
        _append_audit(name, _entry("adopted", version=champion, previous=previous, by=by))
        c.set_registered_model_tag(name, HISTORY_TAG, json.dumps([*stack, champion]))
        notes.append(f"recorded version {champion} as {CHAMPION} (moved without a dlpipe record)")
    for note in notes:
        log.warning("%s: %s", name, note)
    return Recovery("; ".join(notes), completed) if notes else None


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
    require_model(name)
    recovery = recover(name)
    recovered = recovery.note if recovery else None
    if version is None:
        candidate = get_alias(name, CHALLENGER)
        if candidate is None:
            raise RegistryError(
                f"registered model {name!r} has no version with alias {CHALLENGER!r}; run select first, or name one "
                f"with --version ({_versions_text(name)})"
            )
    else:
        candidate = get_version(name, version)
    new = int(candidate.version)
    champion = get_alias(name, CHAMPION)
    old = int(champion.version) if champion else None
    stack = history(name)  # consistent with the alias after `recover`: stack[-1] == old
    if old == new:
        message = f"{name} version {new} is already {CHAMPION}"
        return Decision("unchanged", name, new, old, metric, message=_with(recovered, message), recovered=recovered)
    new_score = old_score = None
    if champion is not None and not force:
        if score is None:
            raise RegistryError("promotion needs a way to score both versions (or --force)")
        try:
            new_score, old_score = score(candidate), score(champion)
        except NotComparable as exc:
            message = (
                f"not compared: {name} version {new} and {CHAMPION} version {old} {exc}; {CHAMPION} stays version "
                f"{old}. To promote version {new} all the same: dlpipe promote --version {new} --force"
            )
            c.set_model_version_tag(name, str(new), "promotion_undecided_at", now())
            c.set_model_version_tag(name, str(new), "promotion_undecided", message)
            _append_audit(name, _entry("not_compared", version=new, champion=old, reason=str(exc), by=actor))
            log.warning(message)
            return Decision(
                "not_compared",
                name,
                new,
                old,
                metric,
                forced=force,
                message=_with(recovered, message),
                recovered=recovered,
            )
        if not new_score > old_score:
            message = (
                f"not promoted: {name} version {new} {metric} {_fmt(new_score)} does not beat {CHAMPION} version "
                f"{old} {metric} {_fmt(old_score)} on the held-out test set"
            )
            c.set_model_version_tag(name, str(new), "promotion_refused_at", now())
            c.set_model_version_tag(name, str(new), "promotion_refused", message)
            _append_audit(
                name,
                _entry(
                    "refused",
                    version=new,
                    champion=old,
                    metric=metric,
                    score=new_score,
                    champion_score=old_score,
                    by=actor,
                ),
            )
            return Decision(
                "refused", name, new, old, metric, new_score, old_score, force, _with(recovered, message), recovered
            )
    elif champion is None:
        new_score = _float(candidate.tags.get(f"test_{metric}"))  # recorded by select, for the record only
    entry = _entry(
        "promoted",
        version=new,
        previous=old,
        metric=metric,
        score=new_score,
        previous_score=old_score,
        forced=force,
        by=actor,
    )
    version_tags = {
        str(new): {
            "promoted_at": entry["at"],
            "promoted_by": actor,
            "previous_champion": str(old) if old is not None else "none",
            "promotion_metric": metric,
            "promotion_score": _fmt(new_score),
            "previous_champion_score": _fmt(old_score),
            "promotion_forced": str(force).lower(),
        }
    }
    if old is not None:
        version_tags[str(old)] = {"replaced_at": entry["at"], "replaced_by": str(new)}
    plan = {
        "kind": "promote",
        "version": new,
        "previous": old,
        "version_tags": version_tags,
        "audit": entry,
        "history": [*stack, new],
    }
    _move_champion(name, plan)
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
    return Decision(
        "promoted", name, new, old, metric, new_score, old_score, force, _with(recovered, message), recovered
    )


def _with(recovered: str | None, message: str) -> str:
    return f"{message} (first {recovered})" if recovered else message


def rollback(name: str, actor: str = "dlpipe promote --rollback") -> Decision:
    """Return `champion` to the version it replaced (repeatable, down to the first champion).

    If this finds an interrupted rollback and completes its record, that rollback is the one asked for: it does not
    roll back a second time."""
    require_model(name)
    recovery = recover(name)
    recovered = recovery.note if recovery else None
    if recovery and recovery.completed and recovery.completed["kind"] == "rollback":
        plan = recovery.completed
        target, current = int(plan["version"]), int(plan["previous"])
        message = f"rolled back: {name} version {target} is {CHAMPION} again (was version {current})"
        return Decision("rolled_back", name, target, current, message=_with(recovered, message), recovered=recovered)
    champion = get_alias(name, CHAMPION)
    if champion is None:
        raise RegistryError(f"registered model {name!r} has no {CHAMPION}; nothing to roll back")
    current = int(champion.version)
    stack = history(name)  # stack[-1] == current after `recover`
    if len(stack) < 2:
        raise RegistryError(f"{name} version {current} is the first {CHAMPION}; there is no previous one to restore")
    target = stack[-2]
    get_version(name, target)  # still exists?
    entry = _entry("rolled_back", version=target, previous=current, by=actor)
    version_tags = {
        str(current): {"rolled_back_at": entry["at"], "rolled_back_to": str(target)},
        str(target): {"restored_at": entry["at"], "restored_from": str(current)},
    }
    plan = {
        "kind": "rollback",
        "version": target,
        "previous": current,
        "version_tags": version_tags,
        "audit": entry,
        "history": stack[:-1],
    }
    _move_champion(name, plan)
    message = f"rolled back: {name} version {target} is {CHAMPION} again (was version {current})"
    log.info(message)
    return Decision("rolled_back", name, target, current, message=_with(recovered, message), recovered=recovered)
