"""Named consumer cursors: durable, atomic, per rank, ignored by the store's tools."""

from __future__ import annotations

from pathlib import Path

import pytest

from gymux.stores import RecordType, Store, store_info, verify
from gymux.stores.cursor import CURSOR_DIR, ConsumerCursor


def make_store(root: Path) -> Store:
    store = Store(root)
    with store.writer() as w:
        w.append(b"x", RecordType.DATA)
    return store


def test_new_cursor_starts_at_zero_and_commits_durably(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s")
    cursor = ConsumerCursor.load(store, "grpo", rank=1, world_size=2)
    assert cursor.next_seq == 0 and not cursor.path.exists()
    cursor.commit(next_seq=5, consumed=2, skipped_stale=1, extra={"step": 3})
    cursor.commit(next_seq=9, consumed=1)
    assert cursor.path == (tmp_path / "s" / CURSOR_DIR / "trajectories" / "grpo.r1of2.json")
    again = ConsumerCursor.load(store, "grpo", rank=1, world_size=2)
    assert again.next_seq == 9
    assert (again.state.consumed_groups, again.state.skipped_stale) == (3, 1)
    assert again.state.extra == {"step": 3}  # kept when a commit gives none
    assert again.state.commits == 2
    # Other ranks and names are other files.
    assert ConsumerCursor.load(store, "grpo", rank=0, world_size=2).next_seq == 0
    assert ConsumerCursor.load(store, "other", rank=1, world_size=2).next_seq == 0


def test_cursor_never_moves_back(tmp_path: Path) -> None:
    cursor = ConsumerCursor.load(make_store(tmp_path / "s"), "c")
    cursor.commit(next_seq=4)
    with pytest.raises(Exception, match="cannot move back"):
        cursor.commit(next_seq=3)
    assert ConsumerCursor.load(tmp_path / "s", "c").next_seq == 4


def test_a_leftover_temporary_file_does_not_matter(tmp_path: Path) -> None:
    """A crash between writing the temporary file and the rename leaves the old state."""
    cursor = ConsumerCursor.load(make_store(tmp_path / "s"), "c")
    cursor.commit(next_seq=2)
    tmp = cursor.path.with_name(cursor.path.name + ".tmp")
    tmp.write_bytes(b'{"torn')
    assert ConsumerCursor.load(tmp_path / "s", "c").next_seq == 2
    cursor.commit(next_seq=3)  # and the next commit replaces it
    assert ConsumerCursor.load(tmp_path / "s", "c").next_seq == 3


def test_bad_names_and_files_are_refused(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s")
    for name in ("", "../x", "a/b", ".hidden"):
        with pytest.raises(ValueError):
            ConsumerCursor.load(store, name)
    with pytest.raises(ValueError):
        ConsumerCursor.load(store, "c", rank=2, world_size=2)
    cursor = ConsumerCursor.load(store, "c")
    cursor.commit(next_seq=1)
    cursor.path.write_bytes(b"not json")
    with pytest.raises(Exception, match="unreadable"):
        ConsumerCursor.load(store, "c")
    # A file copied from another consumer is not taken for this one.
    other = ConsumerCursor.load(store, "d")
    other.commit(next_seq=1)
    cursor.path.write_bytes(other.path.read_bytes())
    with pytest.raises(Exception, match="another consumer"):
        ConsumerCursor.load(store, "c")


def test_store_tools_ignore_the_cursor_folder(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s")
    ConsumerCursor.load(store, "c").commit(next_seq=1)
    assert store.streams() == ["trajectories"]
    report = verify(store)
    assert report.clean and not report.problems
    assert [s.name for s in report.streams] == ["trajectories"]
    assert [s.name for s in store_info(store).streams] == ["trajectories"]
