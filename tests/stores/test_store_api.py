"""What the split-up store modules keep exporting, and the store's errors in the one tree.

(``gymux.stores``'s own exports and the docs' names: tests/project/test_public_api.py.)"""

from __future__ import annotations

import importlib

import pytest

import gymux.stores
from gymux.errors import GymuxError
from gymux.stores import errors as store_errors

#: Names that ``gymux.stores.writer`` and ``gymux.stores.maintenance`` exported before they
#: were split (issue 10): they re-export them, and may add more.
BEFORE_THE_SPLIT = {
    "gymux.stores.writer": "COMMIT_FILE LOCK_FILE AsyncStreamWriter Durability StreamLock "
    "StreamWriter encode_commit read_commit",
    "gymux.stores.maintenance": "DEFAULT_TARGET_BYTES CompactResult DamagedStreamError "
    "DroppedRange Problem SegmentInfo StoreInfo StreamInfo StreamReport VerifyReport compact "
    "lock_holder store_info verify MANIFEST finish_interrupted_compaction",
}


@pytest.mark.parametrize("module", sorted(BEFORE_THE_SPLIT))
def test_split_modules_keep_their_names(module: str) -> None:
    mod = importlib.import_module(module)
    assert set(mod.__all__) >= set(BEFORE_THE_SPLIT[module].split())
    for name in mod.__all__:
        assert getattr(mod, name) is not None, name


def test_store_errors_are_one_tree() -> None:
    assert "DamagedStreamError" in store_errors.__all__
    for name in store_errors.__all__:
        error = getattr(store_errors, name)
        assert issubclass(error, gymux.stores.StoreError), name
        assert issubclass(error, GymuxError), name
    assert issubclass(gymux.stores.RecordTooLargeError, ValueError)


def test_submodules_are_not_shadowed_by_functions() -> None:
    # the package exports the functions verify and compact, not modules of those names;
    # ``gymux.stores.export`` stays the module (``export`` the function lives in it)
    for module in ("export", "info", "verification", "compaction", "manifest"):
        mod = importlib.import_module(f"gymux.stores.{module}")
        assert getattr(gymux.stores, module, mod) is mod, module
