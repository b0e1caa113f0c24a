"""`itsup snapshot prune`: the retention of the `backup-*` tags `itsup snapshot --tag` makes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from itsup.errors import UsageError
from itsup.git import Repo
from itsup.layout import Layout
from itsup.repos import SNAPSHOT_LOGGER, TAG_FORMAT, TAG_PREFIX, chunks, find_repos, remote_name

log = logging.getLogger(SNAPSHOT_LOGGER)


@dataclass
class TagInfo:
    name: str
    time: str
    local: bool
    remote: bool


@dataclass
class RepoPrune:
    label: str
    remote: str | None
    kept: list[TagInfo] = field(default_factory=list)
    deleted: list[TagInfo] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # backup-* names without a time


def _tag_time(name: str) -> datetime | None:
    try:
        return datetime.strptime(name, TAG_FORMAT)
    except ValueError:
        return None


def _remote_tags(repo: Repo, remote: str) -> set[str]:
    text = repo.run("ls-remote", "--tags", "--refs", remote, f"refs/tags/{TAG_PREFIX}*")
    names = set()
    for line in text.splitlines():
        _, _, ref = line.partition("\t")
        if ref.startswith(f"refs/tags/{TAG_PREFIX}"):
            names.add(ref.removeprefix("refs/tags/"))
    return names


def prune_tags(
    layout: Layout,
    *,
    keep_last: int | None,
    older_than: int | None,
    dry_run: bool,
    now: datetime | None = None,
) -> list[RepoPrune]:
    """Delete `backup-*` tags beyond the newest `keep_last` and/or older than `older_than` s.

    Both given: a tag goes only when it is beyond keep-last AND older. Tags are
    deleted on the remote first, then locally, so a run cut short is finished by
    the next one.
    """
    if keep_last is None and older_than is None:
        raise UsageError("say which tags to remove: --keep-last N and/or --older-than DURATION")
    repos = find_repos(layout)
    cutoff = (
        (now or datetime.now()) - timedelta(seconds=older_than) if older_than is not None else None
    )
    results = []
    for repo in repos.unique():
        remote = remote_name(repo)
        local = {t for t in repo.run("tag", "-l", f"{TAG_PREFIX}*").split() if t}
        on_remote = _remote_tags(repo, remote) if remote else set()
        state = RepoPrune(repo.label, remote)
        dated = []
        for name in sorted(local | on_remote):
            t = _tag_time(name)
            if t is None:
                state.ignored.append(name)
            else:
                dated.append((t, name))
        dated.sort(reverse=True)
        for i, (t, name) in enumerate(dated):
            info = TagInfo(name, t.isoformat(), name in local, name in on_remote)
            beyond = keep_last is None or i >= keep_last
            old = cutoff is None or t < cutoff
            (state.deleted if beyond and old else state.kept).append(info)
        if not dry_run and state.deleted:
            gone_remote = [t.name for t in state.deleted if t.remote]
            for chunk in chunks(gone_remote):
                assert remote is not None
                repo.run("push", "--quiet", remote, "--delete", *[f"refs/tags/{n}" for n in chunk])
            gone_local = [t.name for t in state.deleted if t.local]
            for chunk in chunks(gone_local):
                repo.run("tag", "-d", *chunk)
            log.info(
                "%s: pruned %d backup tag(s): %s",
                repo.label,
                len(state.deleted),
                ", ".join(t.name for t in state.deleted),
            )
        results.append(state)
    return results
