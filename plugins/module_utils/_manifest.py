# Copyright (c) strata.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The manifest: a JSON record of the moves of one workflow run.

This module is internal to the strata.migration collection. It is not a public
API and may change without notice.

The manifest lets an interrupted run (the playbook killed in the middle of a
wave) be finished by a rerun with the same file: moves already done are not
made again, a move left `running` is settled from where the VM runs now
(`reconcile`), and the rest is still to do (`pending`). It also tells where
each VM came from, so VMs can go home after maintenance (`returns_home`).

Everything here is plain data and pure functions, except `read_manifest` and
`save_manifest`, which only touch the one file. Every update returns a new
`Manifest`. Hosts are recorded by name, never by URI, so no credential can end
up in the file.

A VM may have several moves in one manifest (a maintenance window that empties
one host after another); its latest move is the one that counts for what is
still to do. A VM is identified by its UUID when both sides know it, else by
its name.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import json
import os
import tempfile
import typing as t
import uuid as uuid_module

from ansible_collections.strata.migration.plugins.module_utils._libvirt import StrataError, redact_uri

MANIFEST_VERSION = 1

WORKFLOWS = ("evacuate", "rebalance", "maintenance_window", "recover")

PLANNED = "planned"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
SKIPPED = "skipped"
STATES = (PLANNED, RUNNING, DONE, FAILED, SKIPPED)

FINISHED_BY_INTERRUPTED_RUN = "finished by an interrupted run"

Clock = t.Callable[[], str]


class ManifestError(StrataError):
    """The manifest cannot be read, written or updated as asked."""


def utc_now() -> str:
    """Return the current time as ISO 8601 UTC, to the second."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass(frozen=True)
class Move:
    """One move of one VM, and how far it went.

    `figures` holds the measured figures of the migration (`total_ms`,
    `downtime_ms`, `transferred_mib`, ...); `attempt` counts how many times the
    move was started. `job_id` is the async job of the latest attempt, so that a
    rerun can wait for a migration an interrupted run left going; it stays once
    the move ends, for the record.
    """

    vm: str
    uuid: t.Optional[str]
    from_host: str
    to_host: str
    state: str = PLANNED
    started_at: t.Optional[str] = None
    ended_at: t.Optional[str] = None
    result: t.Optional[str] = None
    strategy: t.Optional[str] = None
    figures: t.Mapping[str, t.Any] = dataclasses.field(default_factory=dict)
    attempt: int = 0
    job_id: t.Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Manifest:
    """The moves of one workflow run, oldest first."""

    run_id: str
    created_at: str
    updated_at: str
    workflow: str
    moves: t.Tuple[Move, ...] = ()
    version: int = MANIFEST_VERSION
    # Hosts a maintenance window finished (evacuated, maintained, VMs home), with the time: a rerun skips them.
    maintained: t.Mapping[str, str] = dataclasses.field(default_factory=dict)


def _check_host(host: t.Any, role: str, vm: str) -> str:
    if not isinstance(host, str) or not host.strip():
        raise ManifestError("The %s host of VM %r must be a host name." % (role, vm), vm=vm)
    if "://" in host or "@" in host or "/" in host:
        # Never echo the value: it may hold a password.
        shown = redact_uri(host) if "://" in host else "(not shown: it may hold credentials)"
        raise ManifestError(
            "The %s host of VM %r is %s, not a host name. The manifest records hosts by name so that no "
            "URI and no credential is ever written to it; pass the inventory name of the host." % (role, vm, shown),
            vm=vm,
        )
    return host


def _check_move(move: Move) -> Move:
    if not isinstance(move.vm, str) or not move.vm:
        raise ManifestError("A move needs the name of its VM, got %r." % (move.vm,))
    if move.uuid is not None and (not isinstance(move.uuid, str) or not move.uuid):
        raise ManifestError("The UUID of VM %r must be a non-empty string or null." % move.vm, vm=move.vm)
    _check_host(move.from_host, "source", move.vm)
    _check_host(move.to_host, "destination", move.vm)
    if move.from_host == move.to_host:
        raise ManifestError(
            "The move of VM %r has the same source and destination host %r." % (move.vm, move.from_host),
            vm=move.vm,
        )
    if move.state not in STATES:
        raise ManifestError(
            "The move of VM %r has state %r; expected one of %s." % (move.vm, move.state, ", ".join(STATES)),
            vm=move.vm,
        )
    if not isinstance(move.figures, t.Mapping):
        raise ManifestError("The figures of the move of VM %r must be a mapping." % move.vm, vm=move.vm)
    if isinstance(move.attempt, bool) or not isinstance(move.attempt, int) or move.attempt < 0:
        raise ManifestError("The attempt count of the move of VM %r must be a whole number." % move.vm, vm=move.vm)
    for name in ("started_at", "ended_at", "result", "strategy", "job_id"):
        value = getattr(move, name)
        if value is not None and not isinstance(value, str):
            raise ManifestError("The %s of the move of VM %r must be a string or null." % (name, move.vm), vm=move.vm)
    return move


def new_manifest(workflow: str, clock: Clock = utc_now, run_id: t.Optional[str] = None) -> Manifest:
    """Return an empty manifest for a run of `workflow`."""
    if workflow not in WORKFLOWS:
        raise ManifestError("Unknown workflow %r; expected one of %s." % (workflow, ", ".join(WORKFLOWS)))
    now = clock()
    return Manifest(
        run_id=run_id or uuid_module.uuid4().hex,
        created_at=now,
        updated_at=now,
        workflow=workflow,
    )


def manifest_to_dict(manifest: Manifest) -> t.Dict[str, t.Any]:
    """Return the manifest as the plain data written to the file."""
    return {
        "version": manifest.version,
        "run_id": manifest.run_id,
        "created_at": manifest.created_at,
        "updated_at": manifest.updated_at,
        "workflow": manifest.workflow,
        "moves": [
            dict(dataclasses.asdict(move), figures=dict(move.figures))
            for move in manifest.moves
        ],
        "maintained": dict(manifest.maintained),
    }


_MOVE_FIELDS = tuple(field.name for field in dataclasses.fields(Move))
_REQUIRED_MOVE_FIELDS = ("vm", "from_host", "to_host", "state")


def manifest_from_dict(data: t.Any) -> Manifest:
    """Return the manifest held in `data`, checked field by field."""
    if not isinstance(data, dict):
        raise ManifestError("The manifest must be a JSON object.")
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version != MANIFEST_VERSION:
        raise ManifestError(
            "The manifest has version %r; this collection reads and writes version %d." % (version, MANIFEST_VERSION)
        )
    for name in ("run_id", "created_at", "updated_at", "workflow"):
        if not isinstance(data.get(name), str):
            raise ManifestError("The manifest has no %s string." % name)
    if data["workflow"] not in WORKFLOWS:
        raise ManifestError("The manifest is for unknown workflow %r." % data["workflow"])
    raw_moves = data.get("moves")
    if not isinstance(raw_moves, list):
        raise ManifestError("The manifest has no list of moves.")
    moves = []
    for index, raw in enumerate(raw_moves):
        if not isinstance(raw, dict):
            raise ManifestError("Move %d of the manifest is not an object." % index)
        missing = [name for name in _REQUIRED_MOVE_FIELDS if name not in raw]
        if missing:
            raise ManifestError("Move %d of the manifest lacks %s." % (index, ", ".join(missing)))
        fields = {name: raw[name] for name in _MOVE_FIELDS if name in raw}
        if fields.get("figures") is None:
            fields["figures"] = {}
        if fields.get("attempt") is None:
            fields["attempt"] = 0
        fields.setdefault("uuid", None)
        try:
            moves.append(_check_move(Move(**fields)))
        except ManifestError as exc:
            raise ManifestError("Move %d of the manifest: %s" % (index, exc)) from None
    maintained = data.get("maintained") or {}
    if not isinstance(maintained, dict) or not all(
            isinstance(host, str) and isinstance(when, str) for host, when in maintained.items()):
        raise ManifestError("The manifest's maintained hosts must map host names to times.")
    return Manifest(
        run_id=data["run_id"],
        created_at=data["created_at"],
        updated_at=data["updated_at"],
        workflow=data["workflow"],
        moves=tuple(moves),
        version=version,
        maintained=dict(maintained),
    )


def read_manifest(path: str) -> t.Optional[Manifest]:
    """Return the manifest at `path`, or None when there is no file.

    A file that cannot be read or understood is never replaced silently: it raises `ManifestError`,
    naming the file and what to do.
    """
    try:
        with open(path, "r", encoding="utf-8") as stream:
            text = stream.read()
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise ManifestError(
            "Cannot read the manifest %s: %s. Fix its permissions, or pass another manifest path." % (path, exc.strerror),
            path=path,
        ) from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ManifestError(
            "The manifest %s is not valid JSON (%s). It records the moves of an earlier run: repair it, or "
            "move it aside and rerun to start a new record (the VMs it lists then count as not moved)." % (path, exc),
            path=path,
        ) from None
    try:
        return manifest_from_dict(data)
    except ManifestError as exc:
        raise ManifestError(
            "The manifest %s cannot be used: %s Repair it, or move it aside and rerun to start a new record "
            "(the VMs it lists then count as not moved)." % (path, exc),
            path=path,
        ) from None


def save_manifest(path: str, manifest: Manifest) -> None:
    """Write `manifest` to `path` atomically, readable by its owner only.

    See write_private_file: a run killed at any point leaves either the old
    manifest or the new one, never a truncated one. The directory must exist:
    a mistyped path fails instead of starting a record nobody would find.
    """
    for move in manifest.moves:
        _check_move(move)
    text = json.dumps(manifest_to_dict(manifest), indent=2, sort_keys=True) + "\n"
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(directory):
        raise ManifestError(
            "Cannot write the manifest %s: its directory %s does not exist. Create the directory first, or pass "
            "another manifest path." % (path, directory),
            path=path,
        )
    try:
        write_private_file(path, text)
    except OSError as exc:
        raise ManifestError(
            "Cannot write the manifest %s: %s. The previous manifest, if any, is unchanged; fix the directory "
            "or pass another manifest path." % (path, exc.strerror or exc),
            path=path,
        ) from None


def write_private_file(path: str, text: str) -> None:
    """Replace the file at `path` with `text` atomically, readable by its owner only (OSError when it cannot).

    The text goes to a temporary file in the same directory, is flushed to
    disk, then replaces the old file in one rename, so a run killed at any
    point leaves either the old file or the new one, never a truncated one.
    """
    directory = os.path.dirname(os.path.abspath(path))
    # mkstemp creates the file with mode 0600.
    handle, temp_path = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), suffix=".tmp", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_path, path)
    except BaseException:
        try:
            os.unlink(temp_path)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    # Makes the rename itself durable; some file systems cannot open a directory for this.
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _same_vm(move: Move, vm: str, uuid: t.Optional[str]) -> bool:
    if uuid and move.uuid:
        return move.uuid == uuid
    return move.vm == vm


def _latest_index(moves: t.Sequence[Move], vm: str, uuid: t.Optional[str]) -> t.Optional[int]:
    for index in range(len(moves) - 1, -1, -1):
        if _same_vm(moves[index], vm, uuid):
            return index
    return None


def _as_planned(item: t.Union[Move, t.Mapping[str, t.Any]]) -> Move:
    if isinstance(item, Move):
        return _check_move(Move(vm=item.vm, uuid=item.uuid, from_host=item.from_host, to_host=item.to_host,
                                strategy=item.strategy))
    return _check_move(Move(
        vm=item.get("vm"),  # type: ignore[arg-type]  # checked by _check_move
        uuid=item.get("uuid") or None,
        from_host=item.get("from_host", item.get("from")),
        to_host=item.get("to_host", item.get("to")),
        strategy=item.get("strategy"),
    ))


def record_planned(
    manifest: Manifest,
    moves: t.Iterable[t.Union[Move, t.Mapping[str, t.Any]]],
    clock: Clock = utc_now,
) -> Manifest:
    """Merge a new plan into the manifest and return the result.

    `moves` are `Move`s or mappings with `vm`, `uuid` (optional), `from` or
    `from_host`, `to` or `to_host`, and `strategy` (optional), in the order
    they should run. For each, the VM's latest recorded move decides:

    - none, or a done move from another host (the VM moved on since): the
      move is added;
    - done from the same host: kept as it is; the VM is not moved again;
    - running: kept as it is, for the caller to `reconcile` first;
    - planned, failed or skipped: planned again as the new plan says, keeping
      its attempt count.

    Planned moves that the new plan no longer holds become skipped. Moves
    still to do come last, in the order of the new plan.
    """
    now = clock()
    planned = [_as_planned(item) for item in moves]
    for position, move in enumerate(planned):
        for other in planned[:position]:
            if _same_vm(other, move.vm, move.uuid):
                raise ManifestError("The plan moves VM %r more than once." % move.vm, vm=move.vm)

    kept = list(manifest.moves)
    replanned_slots: t.Set[int] = set()
    queued: t.List[Move] = []
    for move in planned:
        index = _latest_index(kept, move.vm, move.uuid)
        if index is None:
            queued.append(move)
            continue
        latest = kept[index]
        if latest.state == RUNNING:
            continue
        if latest.state == DONE:
            if latest.from_host != move.from_host:
                queued.append(dataclasses.replace(move, uuid=move.uuid or latest.uuid))
            continue
        replanned_slots.add(index)
        queued.append(dataclasses.replace(move, uuid=move.uuid or latest.uuid, attempt=latest.attempt))

    history = []
    for index, move in enumerate(kept):
        if index in replanned_slots:
            continue
        if move.state == PLANNED:
            move = dataclasses.replace(move, state=SKIPPED, ended_at=now, result="no longer in the plan")
        history.append(move)
    return dataclasses.replace(manifest, moves=tuple(history + queued), updated_at=now)


def _update_latest(
    manifest: Manifest,
    vm: str,
    uuid: t.Optional[str],
    allowed: t.Tuple[str, ...],
    wanted: str,
    now: str,
    **changes: t.Any,
) -> Manifest:
    moves = list(manifest.moves)
    index = _latest_index(moves, vm, uuid)
    if index is None:
        raise ManifestError("The manifest has no move of VM %r to mark %s." % (vm, wanted), vm=vm)
    latest = moves[index]
    if latest.state not in allowed:
        raise ManifestError(
            "The move of VM %r from %s to %s is %s; only a %s move can be marked %s."
            % (vm, latest.from_host, latest.to_host, latest.state, " or ".join(allowed), wanted),
            vm=vm,
        )
    moves[index] = dataclasses.replace(latest, state=wanted, uuid=latest.uuid or uuid, **changes)
    return dataclasses.replace(manifest, moves=tuple(moves), updated_at=now)


def mark_running(
    manifest: Manifest,
    vm: str,
    uuid: t.Optional[str] = None,
    strategy: t.Optional[str] = None,
    job_id: t.Optional[str] = None,
    clock: Clock = utc_now,
) -> Manifest:
    """Mark the planned move of `vm` as started: one more attempt, started now, with its job (if known)."""
    moves = manifest.moves
    index = _latest_index(moves, vm, uuid)
    attempt = moves[index].attempt + 1 if index is not None else 0
    changes: t.Dict[str, t.Any] = {}
    if strategy is not None:
        changes["strategy"] = strategy
    now = clock()
    # job_id is set even when None: a job of an earlier attempt is not this attempt's.
    return _update_latest(
        manifest, vm, uuid, (PLANNED,), RUNNING, now,
        started_at=now, ended_at=None, result=None, attempt=attempt, job_id=job_id, **changes
    )


def set_job_id(
    manifest: Manifest,
    vm: str,
    job_id: str,
    uuid: t.Optional[str] = None,
    clock: Clock = utc_now,
) -> Manifest:
    """Record the async job of the running move of `vm` (the job starts after the move is marked running).

    Setting the job it already has changes nothing. Another job is refused:
    the one recorded may still be migrating the VM.
    """
    moves = list(manifest.moves)
    index = _latest_index(moves, vm, uuid)
    if index is None:
        raise ManifestError("The manifest has no move of VM %r to record job %s for." % (vm, job_id), vm=vm)
    latest = moves[index]
    if latest.state != RUNNING:
        raise ManifestError(
            "The move of VM %r from %s to %s is %s; only a running move can take a job id."
            % (vm, latest.from_host, latest.to_host, latest.state),
            vm=vm,
        )
    if latest.job_id == job_id:
        return manifest
    if latest.job_id is not None:
        raise ManifestError(
            "The running move of VM %r from %s to %s already has job %s; it cannot take job %s as well. "
            "Wait for job %s and record how it ended first." % (
                vm, latest.from_host, latest.to_host, latest.job_id, job_id, latest.job_id),
            vm=vm,
        )
    moves[index] = dataclasses.replace(latest, job_id=job_id, uuid=latest.uuid or uuid)
    return dataclasses.replace(manifest, moves=tuple(moves), updated_at=clock())


def _finish(
    manifest: Manifest,
    vm: str,
    uuid: t.Optional[str],
    allowed: t.Tuple[str, ...],
    wanted: str,
    result: t.Optional[str],
    strategy: t.Optional[str],
    figures: t.Optional[t.Mapping[str, t.Any]],
    clock: Clock,
) -> Manifest:
    now = clock()
    changes: t.Dict[str, t.Any] = {"ended_at": now, "result": result}
    if strategy is not None:
        changes["strategy"] = strategy
    if figures is not None:
        changes["figures"] = dict(figures)
    index = _latest_index(manifest.moves, vm, uuid)
    if index is not None and manifest.moves[index].started_at is None and wanted != SKIPPED:
        changes["started_at"] = now
    return _update_latest(manifest, vm, uuid, allowed, wanted, now, **changes)


def mark_done(
    manifest: Manifest,
    vm: str,
    uuid: t.Optional[str] = None,
    result: t.Optional[str] = None,
    strategy: t.Optional[str] = None,
    figures: t.Optional[t.Mapping[str, t.Any]] = None,
    clock: Clock = utc_now,
) -> Manifest:
    """Mark the running (or planned, when found already made) move of `vm` as done."""
    return _finish(manifest, vm, uuid, (RUNNING, PLANNED), DONE, result, strategy, figures, clock)


def mark_failed(
    manifest: Manifest,
    vm: str,
    result: str,
    uuid: t.Optional[str] = None,
    strategy: t.Optional[str] = None,
    figures: t.Optional[t.Mapping[str, t.Any]] = None,
    clock: Clock = utc_now,
) -> Manifest:
    """Mark the running or planned move of `vm` as failed, with the reason in `result`."""
    return _finish(manifest, vm, uuid, (RUNNING, PLANNED), FAILED, result, strategy, figures, clock)


def mark_skipped(
    manifest: Manifest,
    vm: str,
    result: str,
    uuid: t.Optional[str] = None,
    clock: Clock = utc_now,
) -> Manifest:
    """Mark the planned move of `vm` as skipped (not attempted), with the reason in `result`."""
    return _finish(manifest, vm, uuid, (PLANNED,), SKIPPED, result, None, None, clock)


def reconcile(
    manifest: Manifest,
    where: t.Mapping[str, t.Optional[str]],
    clock: Clock = utc_now,
) -> Manifest:
    """Settle the moves an interrupted run left `running`, from where each VM runs now.

    `where` maps a VM's UUID or name to the name of the host it runs on now,
    or None (or no entry) when it runs nowhere. A VM on the destination is
    done, one on the source is planned again, anything else is failed for the
    operator to look at.
    """
    now = clock()
    moves = []
    for move in manifest.moves:
        if move.state == RUNNING:
            if move.uuid and move.uuid in where:
                host = where[move.uuid]
            else:
                host = where.get(move.vm)
            if host == move.to_host:
                move = dataclasses.replace(move, state=DONE, ended_at=now, result=FINISHED_BY_INTERRUPTED_RUN)
            elif host == move.from_host:
                move = dataclasses.replace(
                    move, state=PLANNED, started_at=None, ended_at=None,
                    result="interrupted; still on its source, planned again",
                )
            elif host is None:
                move = dataclasses.replace(
                    move, state=FAILED, ended_at=now,
                    result="interrupted and now running on no host: look at both %s and %s for the domain "
                    "and its definition before a rerun" % (move.from_host, move.to_host),
                )
            else:
                move = dataclasses.replace(
                    move, state=FAILED, ended_at=now,
                    result="interrupted and now running on %s, neither its source %s nor its destination %s"
                    % (host, move.from_host, move.to_host),
                )
        moves.append(move)
    return dataclasses.replace(manifest, moves=tuple(moves), updated_at=now)


def pending(manifest: Manifest) -> t.List[Move]:
    """Return the moves still to do, in order."""
    return [move for move in manifest.moves if move.state == PLANNED]


def returns_home(manifest: Manifest, hosts: t.Optional[t.Iterable[str]] = None) -> t.List[t.Dict[str, t.Optional[str]]]:
    """Return the moves that bring moved VMs back to where they first were.

    For each VM with a done move, in the order first moved: `{vm, uuid, from,
    to}` from the host its latest done move put it on to the source of its
    first done move. Only VMs whose first source is in `hosts` count, when
    given. A VM already home, or whose latest move is still running (where it
    runs is unknown until `reconcile`), has none.
    """
    wanted_hosts = None if hosts is None else set(hosts)
    origins: t.List[Move] = []
    for move in manifest.moves:
        if move.state == DONE and not any(_same_vm(origin, move.vm, move.uuid) for origin in origins):
            origins.append(move)
    result = []
    for origin in origins:
        if wanted_hosts is not None and origin.from_host not in wanted_hosts:
            continue
        # Every origin is a move of the manifest, so its VM has a latest move.
        latest = manifest.moves[t.cast(int, _latest_index(manifest.moves, origin.vm, origin.uuid))]
        if latest.state == RUNNING:
            continue
        current = [move for move in manifest.moves if move.state == DONE and _same_vm(move, origin.vm, origin.uuid)][-1]
        if current.to_host == origin.from_host:
            continue
        result.append({
            "vm": origin.vm,
            "uuid": origin.uuid or current.uuid,
            "from": current.to_host,
            "to": origin.from_host,
        })
    return result


# ---- declarative updates (the strata.migration.migration_manifest module) ----

Data = t.Dict[str, t.Any]
_ItemUpdate = t.Callable[[Manifest, int, t.Mapping[str, t.Any], str, t.Optional[str], Clock], Manifest]

ALREADY_ON_DESTINATION = "already on the destination"

# The figures of a live_migrate result kept in the record: (name in the record, section of the result, key).
_RESULT_FIGURES = (
    ("total_ms", "stats", "total_ms"),
    ("downtime_ms", "stats", "downtime_ms"),
    ("transferred_mib", "stats", "transferred_mib"),
    ("memory_mib", "stats", "memory_total_mib"),
    ("iterations", "stats", "iterations"),
    ("compaction_reclaimed_mib", "compaction", "reclaimed_mib"),
    ("disk_transferred_mib", "stats", "disk_transferred_mib"),
)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How one move ended: `state` is DONE or FAILED."""

    state: str
    result: str
    strategy: t.Optional[str] = None
    figures: t.Mapping[str, t.Any] = dataclasses.field(default_factory=dict)


def outcome_of(result: t.Mapping[str, t.Any]) -> Outcome:
    """Return how a move ended from the result of strata.migration.live_migrate, or of a failed task.

    A failed result is failed with its message; a result that changed nothing
    found the VM already on its destination; anything else migrated. The
    strategy and the main figures (time, downtime, MiB sent, guest memory,
    passes, MiB reclaimed by compaction, disk MiB copied) are kept when the result has them.
    """
    strategy = result.get("strategy")
    name = strategy.get("name") if isinstance(strategy, t.Mapping) else strategy
    figures = {}
    for figure, section, key in _RESULT_FIGURES:
        part = result.get(section)
        value = part.get(key) if isinstance(part, t.Mapping) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            figures[figure] = value
    msg = result.get("msg")
    msg = msg if isinstance(msg, str) and msg else None
    if result.get("failed"):
        state, text = FAILED, msg or "failed without a message"
    elif result.get("already_migrated") or result.get("changed") is False:
        state, text = DONE, ALREADY_ON_DESTINATION
    else:
        state, text = DONE, msg or "migrated"
    return Outcome(state=state, result=text, strategy=name if isinstance(name, str) else None, figures=figures)


def record_outcome(
    manifest: Manifest,
    vm: str,
    outcome: Outcome,
    uuid: t.Optional[str] = None,
    clock: Clock = utc_now,
) -> Manifest:
    """Mark the latest move of `vm` done or failed as `outcome` says; a move already so recorded stays as it is."""
    index = _latest_index(manifest.moves, vm, uuid)
    if index is not None and manifest.moves[index].state == outcome.state:
        return manifest
    figures = outcome.figures or None
    if outcome.state == DONE:
        return mark_done(manifest, vm, uuid=uuid, result=outcome.result, strategy=outcome.strategy, figures=figures,
                         clock=clock)
    return mark_failed(manifest, vm, outcome.result, uuid=uuid, strategy=outcome.strategy, figures=figures,
                       clock=clock)


@dataclasses.dataclass(frozen=True)
class Updates:
    """The facts one migration_manifest task records, each None when not given.

    `where` maps VM names or UUIDs to the host each runs on now (None: no
    host); `finished` holds `{vm, uuid, result}`, `skipped` `{vm, uuid,
    reason}`, `plan` migration_plan's moves, `started` `{vm, uuid, job_id}`.
    """

    finished: t.Optional[t.Sequence[t.Mapping[str, t.Any]]] = None
    where: t.Optional[t.Mapping[str, t.Any]] = None
    skipped: t.Optional[t.Sequence[t.Mapping[str, t.Any]]] = None
    plan: t.Optional[t.Sequence[t.Mapping[str, t.Any]]] = None
    started: t.Optional[t.Sequence[t.Mapping[str, t.Any]]] = None
    maintained: t.Optional[t.Sequence[str]] = None


def _item_error(option: str, index: int, msg: str, vm: t.Optional[str] = None) -> ManifestError:
    details: Data = {"option": option}
    if vm is not None:
        details["vm"] = vm
    return ManifestError("%s[%d]: %s" % (option, index, msg), **details)


def _optional_text(option: str, index: int, item: t.Mapping[str, t.Any], key: str) -> t.Optional[str]:
    value = item.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _item_error(option, index, "%s must be a string or null, got %r." % (key, value), item.get("vm"))
    return value


def _vm_of(option: str, index: int, item: t.Any) -> t.Tuple[str, t.Optional[str]]:
    if not isinstance(item, t.Mapping):
        raise _item_error(option, index, "expected a mapping with vm, got %r." % (item,))
    vm = item.get("vm")
    if not isinstance(vm, str) or not vm:
        raise _item_error(option, index, "vm must be the name of the VM, got %r." % (vm,))
    return vm, _optional_text(option, index, item, "uuid")


def _apply_each(
    manifest: Manifest,
    option: str,
    items: t.Sequence[t.Any],
    update: _ItemUpdate,
    clock: Clock,
) -> Manifest:
    for index, item in enumerate(items):
        vm, uuid = _vm_of(option, index, item)
        try:
            manifest = update(manifest, index, item, vm, uuid, clock)
        except ManifestError as exc:
            if exc.details.get("option") == option:
                raise
            raise _item_error(option, index, str(exc), vm) from None
    return manifest


def _finish_item(
    manifest: Manifest, index: int, item: t.Mapping[str, t.Any], vm: str, uuid: t.Optional[str], clock: Clock
) -> Manifest:
    result = item.get("result")
    if not isinstance(result, t.Mapping):
        raise _item_error("finished", index, "result must be the result of the task, got %r." % (result,), vm)
    return record_outcome(manifest, vm, outcome_of(result), uuid=uuid, clock=clock)


def _skip_item(
    manifest: Manifest, index: int, item: t.Mapping[str, t.Any], vm: str, uuid: t.Optional[str], clock: Clock
) -> Manifest:
    reason = item.get("reason")
    if not isinstance(reason, str) or not reason:
        raise _item_error("skipped", index, "reason must say why VM %r is not moved." % vm, vm)
    latest = _latest_index(manifest.moves, vm, uuid)
    if latest is not None and manifest.moves[latest].state == SKIPPED:
        return manifest
    return mark_skipped(manifest, vm, reason, uuid=uuid, clock=clock)


def _start_item(
    manifest: Manifest, index: int, item: t.Mapping[str, t.Any], vm: str, uuid: t.Optional[str], clock: Clock
) -> Manifest:
    job_id = _optional_text("started", index, item, "job_id")
    latest = _latest_index(manifest.moves, vm, uuid)
    if latest is not None and manifest.moves[latest].state == RUNNING:
        # The job starts after its move is recorded running: this records its id.
        return manifest if job_id is None else set_job_id(manifest, vm, job_id, uuid=uuid, clock=clock)
    return mark_running(manifest, vm, uuid=uuid, job_id=job_id, clock=clock)


def _record_plan(manifest: Manifest, items: t.Sequence[t.Any], clock: Clock) -> Manifest:
    moves = []
    for index, item in enumerate(items):
        vm, uuid = _vm_of("plan", index, item)
        try:
            moves.append(_as_planned(dict(item, uuid=uuid)))
        except ManifestError as exc:
            raise _item_error("plan", index, str(exc), vm) from None
    try:
        return record_planned(manifest, moves, clock=clock)
    except ManifestError as exc:
        raise ManifestError("plan: %s" % exc, option="plan", **exc.details) from None


def _check_where(where: t.Any) -> t.Dict[str, t.Optional[str]]:
    if not isinstance(where, t.Mapping):
        raise ManifestError("where must map VM names or UUIDs to host names, got %r." % (where,), option="where")
    for key, host in where.items():
        if not isinstance(key, str) or not key:
            raise ManifestError("where: the key %r is not a VM name or UUID." % (key,), option="where")
        if host is not None and (not isinstance(host, str) or not host):
            raise ManifestError(
                "where: VM %r runs on %r; give the name of its host, or null when it runs on no host." % (key, host),
                option="where",
            )
    return dict(where)


def apply_updates(manifest: Manifest, updates: Updates, clock: Clock = utc_now) -> Manifest:
    """Return `manifest` with `updates` recorded, in this order: finished, where, skipped, plan, started.

    Finished moves come first so that `where` settles (see `reconcile`) only
    the moves left running that no result tells about. Errors name the option
    and the index of the item.
    """
    if updates.finished is not None:
        manifest = _apply_each(manifest, "finished", updates.finished, _finish_item, clock)
    if updates.where is not None:
        manifest = reconcile(manifest, _check_where(updates.where), clock=clock)
    if updates.skipped is not None:
        manifest = _apply_each(manifest, "skipped", updates.skipped, _skip_item, clock)
    if updates.plan is not None:
        manifest = _record_plan(manifest, updates.plan, clock)
    if updates.started is not None:
        manifest = _apply_each(manifest, "started", updates.started, _start_item, clock)
    if updates.maintained:
        manifest = mark_maintained(manifest, updates.maintained, clock)
    return manifest


def mark_maintained(manifest: Manifest, hosts: t.Iterable[str], clock: Clock = utc_now) -> Manifest:
    """Record `hosts` as finished by a maintenance window; a host already recorded keeps its time."""
    new = [host for host in hosts if host not in manifest.maintained]
    for host in new:
        _check_host(host, "maintained", "-")
    if not new:
        return manifest
    now = clock()
    maintained = dict(manifest.maintained)
    maintained.update((host, now) for host in new)
    return dataclasses.replace(manifest, maintained=maintained, updated_at=now)


@dataclasses.dataclass(frozen=True)
class ManifestState:
    """The outcome of `ensure_manifest`: the manifest before (None when there was no file) and after."""

    changed: bool
    before: t.Optional[Manifest]
    after: Manifest


def ensure_manifest(
    path: str,
    workflow: t.Optional[str],
    updates: Updates,
    check_mode: bool = False,
    clock: Clock = utc_now,
) -> ManifestState:
    """Record `updates` in the manifest at `path`, creating it for `workflow` when there is none.

    The file is written only when it is new or its moves change (a rerun after
    success changes nothing), and never in check mode. `workflow`, when given,
    must be the one the file records.
    """
    before = read_manifest(path)
    if before is None:
        if workflow is None:
            raise ManifestError(
                "The manifest %s does not exist yet; set workflow to start it (evacuate, rebalance or "
                "maintenance_window), or pass the path of an existing manifest." % path,
                option="workflow", path=path,
            )
        current = new_manifest(workflow, clock=clock)
    else:
        if workflow is not None and workflow != before.workflow:
            raise ManifestError(
                "The manifest %s belongs to workflow %s, not %s. Pass the manifest path of the %s run, or move %s "
                "aside to start a new record." % (path, before.workflow, workflow, workflow, path),
                option="workflow", path=path,
            )
        current = before
    after = apply_updates(current, updates, clock=clock)
    if after.moves == current.moves and after.maintained == current.maintained:
        after = current
    changed = before is None or after.moves != before.moves or after.maintained != before.maintained
    if changed and not check_mode:
        save_manifest(path, after)
    return ManifestState(changed=changed, before=before, after=after)


def move_summary(move: Move) -> Data:
    """Return a move as `{vm, uuid, from, to}`, the input of live_migrate tasks."""
    return {"vm": move.vm, "uuid": move.uuid, "from": move.from_host, "to": move.to_host}


def manifest_view(manifest: Manifest, home_hosts: t.Optional[t.Iterable[str]] = None) -> Data:
    """Return what the migration_manifest module reports besides `changed`."""
    counts = {state: 0 for state in STATES}
    for move in manifest.moves:
        counts[move.state] += 1
    return {
        "manifest": manifest_to_dict(manifest),
        "pending": [move_summary(move) for move in pending(manifest)],
        "running": [dict(move_summary(move), job_id=move.job_id) for move in manifest.moves if move.state == RUNNING],
        "returns_home": returns_home(manifest, hosts=home_hosts),
        "counts": counts,
        "maintained": dict(manifest.maintained),
    }
