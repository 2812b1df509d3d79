"""The ``COMPACTING`` manifest: how a compaction switches a stream over to its new segments,
and how an interrupted one is finished (by the next ``compact`` or the next writer's open).

New segments and indexes are first written to ``*.compact`` files and fsynced, then the
manifest naming the groups (and the moved COMMIT position) is written and fsynced. Only
then are the old segments hidden (renamed to ``*.seg.compacted``), the new ones renamed into
place, the directory fsynced, and the old files deleted. Every step after the manifest is
idempotent, so :func:`apply_manifest` can be run again after a crash at any point.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from gymux.stores.commit import COMMIT_FILE, encode_commit
from gymux.stores.format import fsync_dir, index_name, segment_name, write_file_durable

__all__ = [
    "HIDDEN_SUFFIX",
    "MANIFEST",
    "TMP_SUFFIX",
    "Manifest",
    "apply_manifest",
    "finish_interrupted_compaction",
    "hidden_path",
    "tmp_path",
]

MANIFEST = "COMPACTING"
#: Suffix of a new segment or index being written.
TMP_SUFFIX = ".compact"
#: Suffix of an old segment after the switch-over started.
HIDDEN_SUFFIX = ".compacted"


class Manifest(msgspec.Struct):
    """``COMPACTING``: the groups being merged (first segment = target) and the new COMMIT."""

    groups: list[list[int]]
    commit: tuple[int, int, int] | None = None
    version: int = 1


def tmp_path(path: Path) -> Path:
    return path.with_name(path.name + TMP_SUFFIX)


def hidden_path(path: Path) -> Path:
    return path.with_name(path.name + HIDDEN_SUFFIX)


def apply_manifest(sdir: Path, manifest: Manifest) -> None:
    """Carry out (or finish) a compaction described by its manifest. Idempotent."""
    groups = manifest.groups
    for group in groups:
        target = group[0]
        seg, idx = sdir / segment_name(target), sdir / index_name(target)
        if tmp_path(seg).exists():
            for src in group[1:]:
                if (sdir / segment_name(src)).exists():
                    os.replace(sdir / segment_name(src), hidden_path(sdir / segment_name(src)))
            idx.unlink(missing_ok=True)  # a missing index is rebuilt; a stale one misleads
            os.replace(tmp_path(seg), seg)
        if tmp_path(idx).exists():
            os.replace(tmp_path(idx), idx)
    fsync_dir(sdir)
    for group in groups:
        for src in group[1:]:
            path = sdir / segment_name(src)
            path.unlink(missing_ok=True)
            hidden_path(path).unlink(missing_ok=True)
            (sdir / index_name(src)).unlink(missing_ok=True)
    if manifest.commit is not None:
        next_seq, segment, offset = manifest.commit
        write_file_durable(sdir / COMMIT_FILE, encode_commit(next_seq, segment, offset))
    fsync_dir(sdir)
    (sdir / MANIFEST).unlink()
    fsync_dir(sdir)


def finish_interrupted_compaction(sdir: Path) -> bool:
    """Finish an interrupted compaction; remove temporary files of one that never
    reached its manifest. True if there was one to finish."""
    resumed = False
    manifest_path = sdir / MANIFEST
    if manifest_path.exists():
        try:
            manifest = msgspec.json.decode(manifest_path.read_bytes(), type=Manifest)
        except msgspec.DecodeError:
            # The manifest is written and fsynced before any rename: a torn one means
            # nothing was renamed yet, so the temporary files are simply discarded.
            manifest_path.unlink()
        else:
            apply_manifest(sdir, manifest)
            resumed = True
    stray = False
    for entry in os.listdir(sdir):
        if entry.endswith((TMP_SUFFIX, ".idx.tmp", "COMMIT.tmp", MANIFEST + ".tmp")):
            (sdir / entry).unlink(missing_ok=True)
            stray = True
    if stray:
        fsync_dir(sdir)
    return resumed
