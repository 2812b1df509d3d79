"""TokenLedger / ChatTokenizer: template once, observations appended, exact ids and masks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("jinja2")

from gymux.errors import PolicyError
from gymux.messages import Message
from gymux.policies.tokens import ChatTokenizer, TokenLedger
from gymux.stores.codec import pack_int32, pack_uint8

from doubles.sglang_double import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> ChatTokenizer:
    return ChatTokenizer.from_dir(build_tiny_tokenizer(tmp_path_factory.mktemp("tok")))


def first_messages() -> list[Message]:
    return [
        Message(role="user", content="Solve the maze."),
        Message(role="assistant", content="OK"),
        Message(role="user", content="The goal is at position (1, 2)."),
    ]


def test_roundtrip_and_template(tok: ChatTokenizer) -> None:
    text = "Thought: go.\nAction: move up"
    assert tok.decode(tok.encode(text)) == text
    rendered = tok.render(first_messages(), add_generation_prompt=True)
    assert rendered.startswith("<|im_start|>user\nSolve the maze.<|im_end|>\n")
    assert rendered.endswith("<|im_start|>assistant\n")
    assert tok.eos_id == tok.tokenizer.token_to_id("<|im_end|>")


def test_ledger_appends_and_masks(tok: ChatTokenizer) -> None:
    ledger = TokenLedger(tok)
    msgs = first_messages()
    p0 = ledger.prompt_for(msgs)
    assert p0 == tok.encode(tok.render(msgs, add_generation_prompt=True))
    out = [*tok.encode("Thought: x\nAction: move up"), tok.eos_id]
    ledger.append_generated(out, [-0.5] * len(out))
    msgs += [
        Message(role="assistant", content="Thought: x\nAction: move up"),
        Message(role="user", content="You moved up."),
    ]
    p1 = ledger.prompt_for(msgs)
    assert p1[: len(p0) + len(out)] == p0 + out  # prefix never changes
    # The suffix is exactly the template's rendering of the next turn (EOS not duplicated).
    full = tok.render(msgs, add_generation_prompt=True)
    assert tok.decode(p1, skip_special_tokens=False) == full
    assert ledger.loss_mask == [0] * len(p0) + [1] * len(out) + [0] * (len(p1) - len(p0) - len(out))
    assert ledger.logprobs[len(p0) : len(p0) + len(out)] == [-0.5] * len(out)
    data = ledger.token_data()
    assert data.ids == pack_int32(p1) and data.loss_mask == pack_uint8(ledger.loss_mask)
    assert data.length == len(p1)


def test_length_finish_gets_full_closing(tok: ChatTokenizer) -> None:
    ledger = TokenLedger(tok)
    msgs = first_messages()
    p0 = ledger.prompt_for(msgs)
    out = tok.encode("Thought: tru")  # cut off, no EOS
    ledger.append_generated(out, None)
    msgs += [Message(role="assistant", content="Thought: tru"), Message(role="user", content="Go.")]
    p1 = ledger.prompt_for(msgs)
    assert tok.decode(p1, skip_special_tokens=False) == tok.render(msgs, add_generation_prompt=True)
    assert p1[: len(p0)] == p0


def test_out_of_step_is_policy_error(tok: ChatTokenizer) -> None:
    ledger = TokenLedger(tok)
    msgs = first_messages()
    ledger.prompt_for(msgs)
    with pytest.raises(PolicyError):
        ledger.prompt_for([*msgs, Message(role="user", content="again")])
    with pytest.raises(PolicyError):
        ledger.append_generated([1, 2], [0.0])


def test_missing_template(tmp_path: Path) -> None:
    folder = build_tiny_tokenizer(tmp_path)
    (folder / "tokenizer_config.json").write_text("{}")
    with pytest.raises(PolicyError, match="chat_template"):
        ChatTokenizer.from_dir(folder)
    with pytest.raises(PolicyError, match="cannot load"):
        ChatTokenizer.from_dir(tmp_path / "nope")


# -- turn 0 tokenized piece by piece (PieceEncoder): the same ids as the whole text ------------

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

#: Texts that stress the cut points: spaces and newlines around them, special-token text
#: inside the content, partial special tokens, non-ASCII, empty content.
AWKWARD = [
    "",
    " ",
    "\n",
    "  leading and trailing  ",
    "\n\nblank lines\n\n",
    "<|im_end|> inside content",
    "half a token: <|im_",
    "end_header_id|> and <|eot",
    "ünïcödé ✓ 迷宫 🙂",
    "Thought: I should move up.\nAction: move up",
    "tabs\tand\r\nCRLF",
]


def _episode_messages(rng: Any, instruction: str) -> list[Message]:
    words = ["move", "up", "down", "wall", "goal", "(3, 4)", "\n", " ", "<|im_end|>", "ü", ""]
    obs = "".join(rng.choice(words) for _ in range(rng.randrange(0, 30)))
    if rng.random() < 0.3:
        obs = rng.choice(AWKWARD) + obs
    return [
        Message(role="user", content=instruction),
        Message(role="assistant", content=rng.choice(["OK", "OK.", " OK\n"])),
        Message(role="user", content=obs),
    ]


def _assert_pieces_exact(tok: ChatTokenizer, episodes: int = 300, envs: int = 6) -> None:
    """Many episodes of several envs (an instruction each): the turn-0 ids from the piece
    cache equal the whole text's ids, every time."""
    import random

    rng = random.Random(1234)
    instructions = [
        f"Env {e}: solve the maze. " * rng.randrange(1, 40) + rng.choice(AWKWARD)
        for e in range(envs)
    ]
    for i in range(episodes):
        messages = _episode_messages(rng, instructions[i % envs])
        if rng.random() < 0.2:
            messages.insert(0, Message(role="system", content=rng.choice(AWKWARD)))
        text = tok.render(messages, add_generation_prompt=True)
        whole = tok.encode(text)
        assert tok.encode_prompt(text) == whole, (i, text)
        # Turn 0 from the per-start cache (ChatTokenizer.prompt_pieces) too.
        assert [t for piece in tok.prompt_pieces(messages) for t in piece.ids] == whole, (i, text)
        # A later turn with the same observation, from the user turn's frame: the plain
        # encoding of the template's next-turn text, whether the model emitted its closing
        # token or not.
        obs = messages[-1].content
        for out in ([5, 6], [5, *tok._closing_ids[:1]]):
            closing = tok._closing_ids[1:] if out[-1:] == list(tok._closing_ids[:1]) else None
            expected = [
                *(tok._closing_ids if closing is None else closing),
                *tok.encode(tok._user_prefix + obs + tok._user_suffix),
            ]
            assert tok.user_turn_suffix(obs, after_generated=out) == expected, (i, obs)
    for text in AWKWARD:
        assert tok.encode_prompt(text) == tok.encode(text)
    _assert_prefetch_exact(tok, rng, instructions)


def _assert_prefetch_exact(tok: ChatTokenizer, rng: Any, instructions: list[str]) -> None:
    """Pieces tokenized ahead in one call (``PieceEncoder.prefetch``: a batch's new
    observations, and turn-0 prompts of starts seen before) are the pieces a lookup one by
    one makes: the same ids, and the lookups then tokenize nothing."""
    observations = [f"Batch {n}: " + _episode_messages(rng, "")[-1].content for n in range(40)]
    prompts = [
        [
            Message(role="user", content=instructions[n % len(instructions)]),
            Message(role="assistant", content="OK"),
            Message(role="user", content=f"Start {n}: {observations[n]}"),
        ]
        for n in range(20)
    ]
    keys = tok.turn_piece_keys(prompts, observations)
    made = tok.pieces.prefetch(keys)
    if tok.pieces._cut is None:  # not cutting: nothing to prefetch, lookups as before
        assert made == 0
    else:
        assert made == len({(lead, text) for lead, text, _ in keys}) > 0
    misses, prefetched = tok.pieces.misses, tok.pieces.prefetched
    for obs in observations:
        expected = [*tok._closing_ids, *tok.encode(tok._user_prefix + obs + tok._user_suffix)]
        assert tok.user_turn_suffix(obs, after_generated=[5, 6]) == expected, obs
    if tok.pieces._cut is not None:
        assert tok.pieces.misses == misses  # every observation's piece came from the prefetch
    for messages in prompts:  # (a template that trims content has no key: rendered whole)
        whole = tok.encode(tok.render(messages, add_generation_prompt=True))
        assert [t for piece in tok.prompt_pieces(messages) for t in piece.ids] == whole
    if tok.pieces._cut is not None and len(keys) > len(observations):
        assert tok.pieces.misses == misses  # and every known start's observation piece
    assert tok.pieces.prefetched == prefetched
    assert tok.pieces.prefetch(keys) == 0  # all cached now (or nothing to cut)


def test_a_prefetched_piece_that_fails_its_check_is_not_cached(tok: ChatTokenizer) -> None:
    """A piece whose ids do not end with the cut token it names is not cached by the
    prefetch: looking it up tokenizes it again and fails the same way."""
    wrong = (None, "no cut token at its end", "<|im_end|>")
    assert tok.pieces.prefetch([wrong]) == 1
    assert (None, wrong[1]) not in tok.pieces._cache
    assert tok.pieces._piece(*wrong) is None


def test_ledgers_prefetch_a_batch_and_prepare_the_same_prompts(tmp_path: Path) -> None:
    """``EpisodeLedgers.prefetch`` (what the SGLang policy's batch strategies call before
    preparing a batch) tokenizes the batch's new pieces in one call; the prompts are then
    exactly those of ledgers that tokenize one by one, and nothing else is tokenized."""
    import random

    from gymux.messages import PolicyRequest
    from gymux.policies.tokens import EpisodeLedgers, PromptIds

    plain = EpisodeLedgers(ChatTokenizer.from_dir(build_tiny_tokenizer(tmp_path / "a")))
    ahead = EpisodeLedgers(ChatTokenizer.from_dir(build_tiny_tokenizer(tmp_path / "b")))
    rng = random.Random(7)
    instruction = "Solve the maze. " * 30
    history = {
        f"e{i}": [
            Message(role="user", content=instruction),
            Message(role="assistant", content="OK"),
            Message(role="user", content=f"Maze {i}, start {rng.randrange(10**6)}."),
        ]
        for i in range(12)
    }

    def prompts(ledgers: EpisodeLedgers, turn: int) -> list[list[int]]:
        out = []
        for episode, messages in history.items():
            got = ledgers.prompt_ids(
                PolicyRequest(
                    episode_id=episode, env_id="m", task_id=0, turn=turn, messages=messages
                ),
                max_new_tokens=8,
                context_length=None,
            )
            assert isinstance(got, PromptIds)
            out.append(got.ids())
        return out

    for turn in range(3):
        requests = [
            PolicyRequest(episode_id=e, env_id="m", task_id=0, turn=turn, messages=list(m))
            for e, m in history.items()
        ]
        misses = ahead.tokenizer.pieces.misses
        made = ahead.prefetch(requests)
        # Turn 0 of the first batch: the env's start is not known yet, so nothing ahead.
        assert made == (0 if turn == 0 else len(history))
        assert prompts(ahead, turn) == prompts(plain, turn)
        if turn:
            assert ahead.tokenizer.pieces.misses == misses
        for episode, messages in history.items():
            answer = [rng.randrange(50, 90) for _ in range(rng.randrange(1, 6))]
            for ledgers in (plain, ahead):
                ledgers.record(episode, answer, None)
            messages.append(Message(role="assistant", content="x", loss=True))
            messages.append(Message(role="user", content=f"Moved {turn}: {rng.randrange(10**6)}."))
    # A new episode of the same env: its turn-0 piece is known ahead now.
    new = [*history["e0"][:2], Message(role="user", content="Maze 99, start 5.")]
    request = PolicyRequest(episode_id="new", env_id="m", task_id=0, turn=0, messages=new)
    assert ahead.prefetch([request]) == 1


def test_pieces_equal_whole_text_chatml(tok: ChatTokenizer) -> None:
    assert set(tok.pieces.boundaries) == {"<|im_start|>", "<|im_end|>"}
    _assert_pieces_exact(tok)
    assert tok.pieces.hits > tok.pieces.misses  # the instructions came from the cache
    assert tok.pieces.whole == 0


def test_turn_zero_renders_the_template_once_per_start(tmp_path: Path) -> None:
    """Episodes that share their first messages (an env's instruction and "OK") render the
    template once for that start; each later episode tokenizes only the piece with its
    observation, and its ids equal the whole rendering's, awkward observations included."""
    tok = ChatTokenizer.from_dir(build_tiny_tokenizer(tmp_path / "tok"))
    renders = 0
    render = tok.render

    def counting(messages: Any, *, add_generation_prompt: bool) -> str:
        nonlocal renders
        renders += 1
        return render(messages, add_generation_prompt=add_generation_prompt)

    tok.render = counting  # type: ignore[method-assign]
    instruction = "Solve the maze. Answer with Thought and Action. " * 50
    start = [Message(role="user", content=instruction), Message(role="assistant", content="OK")]
    tok.prompt_pieces([*start, Message(role="user", content="warm-up")])
    renders = 0
    for n, content in enumerate(AWKWARD):
        messages = [*start, Message(role="user", content=f"{content} at ({n}, 7).")]
        ids = [t for piece in tok.prompt_pieces(messages) for t in piece.ids]
        assert ids == tok.encode(render(messages, add_generation_prompt=True))
    misses = tok.pieces.misses
    for n in range(10):
        tok.prompt_pieces([*start, Message(role="user", content=f"You are at ({n}, 3).")])
    assert tok.pieces.misses - misses == 10  # one new piece each: the observation's
    assert renders == 0
    other = [Message(role="user", content="Another env."), Message(role="assistant", content="OK")]
    tok.prompt_pieces([*other, Message(role="user", content="x")])
    assert renders == 2  # a new start: the probe rendering and the check against a real one


def test_turn_zero_of_a_template_that_rewrites_content_is_rendered_every_time(
    tmp_path: Path,
) -> None:
    """A template that trims the content (as Llama 3's does) would not carry an
    observation verbatim: such a start is rendered in full for every prompt."""
    tok = _llama3_tokenizer(tmp_path)
    start = [Message(role="user", content="Solve it."), Message(role="assistant", content="OK")]
    for content in ("  padded  ", "plain", "\ntrailing\n"):
        messages = [*start, Message(role="user", content=content)]
        text = tok.render(messages, add_generation_prompt=True)
        assert [t for piece in tok.prompt_pieces(messages) for t in piece.ids] == tok.encode(text)
    assert list(tok._heads.values()) == [None]


def test_a_later_turn_tokenizes_only_the_piece_with_its_observation(tmp_path: Path) -> None:
    """A later turn's ids are exactly the plain encoding of the template's next-turn text
    (awkward observations too: special tokens, half tokens, unicode, blank), and once the
    wrapper's pieces are cached, each new observation costs one piece tokenized."""
    tok = ChatTokenizer.from_dir(build_tiny_tokenizer(tmp_path / "tok"))
    wrapper = (tok._user_prefix, tok._user_suffix)
    out = tok.encode("Thought: x\nAction: move up")
    for content in AWKWARD:
        got = tok.user_turn_suffix(content, after_generated=out)
        assert got == [*tok._closing_ids, *tok.encode(wrapper[0] + content + wrapper[1])]
    assert tok.pieces.whole == 0
    misses = tok.pieces.misses
    for n in range(10):
        tok.user_turn_suffix(f"You moved to ({n}, 3).", after_generated=out)
    assert tok.pieces.misses - misses == 10


def test_an_env_instruction_is_tokenized_once(tmp_path: Path) -> None:
    tok = ChatTokenizer.from_dir(build_tiny_tokenizer(tmp_path / "tok"))
    instruction = "Solve the maze. Answer with Thought and Action. " * 50
    ledger = TokenLedger(tok)
    ledger.prompt_for(_episode_messages(__import__("random").Random(0), instruction))
    misses = tok.pieces.misses
    for n in range(20):  # new episodes: only their own observation is new text
        messages = [
            Message(role="user", content=instruction),
            Message(role="assistant", content="OK"),
            Message(role="user", content=f"You are at ({n}, 7)."),
        ]
        ids = TokenLedger(tok).prompt_for(messages)
        assert ids == tok.encode(tok.render(messages, add_generation_prompt=True))
    assert tok.pieces.misses - misses == 20


def test_episodes_share_their_instruction_pieces_instead_of_copying_them(tmp_path: Path) -> None:
    """Turn 0's cached pieces are referred to, not copied: the ledgers of two episodes hold
    the same instruction piece object, their own arrays start empty, and everything read
    from them (ids, mask, logprobs, prompt JSON, TokenData) is still the whole sequence."""
    import msgspec

    from gymux.stores.codec import pack_float32

    tok = ChatTokenizer.from_dir(build_tiny_tokenizer(tmp_path / "tok"))
    instruction = "Solve the maze. Answer with Thought and Action. " * 50
    ledgers = []
    for n in range(2):
        msgs = [
            Message(role="user", content=instruction),
            Message(role="assistant", content="OK"),
            Message(role="user", content=f"You are at ({n}, 7)."),
        ]
        ledger = TokenLedger(tok)
        p0 = ledger.prompt_for(msgs)
        assert p0 == tok.encode(tok.render(msgs, add_generation_prompt=True))
        assert len(ledger._ids) == 0 and len(ledger) == len(p0)
        ledgers.append((ledger, msgs, p0))
    big = [[piece for piece in ledger._head if piece.n > 100] for ledger, _, _ in ledgers]
    assert len(big[0]) == 1 and big[0][0] is big[1][0]  # one shared instruction piece
    ledger, msgs, p0 = ledgers[1]
    out = [*tok.encode("Thought: x\nAction: move up"), tok.eos_id]
    ledger.append_generated(out, [-0.25] * len(out))
    msgs = [*msgs, Message(role="assistant", content="x"), Message(role="user", content="Moved.")]
    p1 = ledger.prompt_for(msgs)
    assert p1[: len(p0)] == p0 and p1[len(p0) : len(p0) + len(out)] == out
    prompt = ledger.prompt_ids()
    assert msgspec.json.decode(b"".join(prompt.json_parts())) == p1 == prompt.ids()
    assert len(prompt) == len(p1) == len(ledger)
    mask = [0] * len(p0) + [1] * len(out) + [0] * (len(p1) - len(p0) - len(out))
    logprobs = [0.0] * len(p0) + [-0.25] * len(out) + [0.0] * (len(p1) - len(p0) - len(out))
    assert ledger.loss_mask == mask and ledger.logprobs == logprobs
    data = ledger.token_data()
    assert data.ids == pack_int32(p1) and data.loss_mask == pack_uint8(mask)
    assert data.logprobs == pack_float32(logprobs)
    # The other episode's ledger did not change.
    first, _, first_p0 = ledgers[0]
    assert first.ids == first_p0 and first.token_data().ids == pack_int32(first_p0)


def test_piece_encoder_pieces_concatenate_to_the_whole_text_ids(tok: ChatTokenizer) -> None:
    text = tok.render(first_messages(), add_generation_prompt=True)
    pieces = tok.encode_prompt_pieces(text)
    assert len(pieces) > 1
    flat = [i for piece in pieces for i in piece.ids]
    assert flat == tok.encode(text) == tok.encode_prompt(text)
    for piece in pieces:
        assert list(piece.ids) == (json.loads(b"[" + piece.json + b"]") if piece.n else [])
    assert tok.encode_prompt_pieces(text)[0] is pieces[0]  # cached objects


def _trained_tokenizer(
    folder: Path,
    *,
    specials: list[str],
    template: str,
    eos: str,
    bos: str | None = None,
    metaspace: bool = False,
    added: list[Any] | None = None,
) -> ChatTokenizer:
    """A small BPE tokenizer trained here (byte-level, or Metaspace with
    ``prepend_scheme="first"`` as sentencepiece-style tokenizers have), written as a folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = [f"Env {e}: solve the maze. The goal is at ({e}, {e + 1}). move up" for e in range(50)]
    corpus += AWKWARD
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>" if metaspace else None))
    if metaspace:
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
        tokenizer.decoder = decoders.Metaspace(prepend_scheme="first")
        alphabet: list[str] = []
        specials = ["<unk>", *specials]
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    if added:
        tokenizer.add_tokens(added)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"chat_template": template, "eos_token": eos, "bos_token": bos}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return ChatTokenizer.from_dir(folder)


def _llama3_tokenizer(tmp_path: Path) -> ChatTokenizer:
    """A trained tokenizer with Llama 3's special tokens and template (BOS, trimmed content)."""
    return _trained_tokenizer(
        tmp_path,
        specials=LLAMA3_SPECIALS,
        template=LLAMA3_TEMPLATE,
        eos="<|eot_id|>",
        bos="<|begin_of_text|>",
    )


def test_pieces_equal_whole_text_llama3_with_bos(tmp_path: Path) -> None:
    tok = _llama3_tokenizer(tmp_path)
    assert set(tok.pieces.boundaries) == set(LLAMA3_SPECIALS)
    _assert_pieces_exact(tok)


def test_pieces_equal_whole_text_metaspace_first(tmp_path: Path) -> None:
    """Sentencepiece-style: only the text's first stretch gets the '▁' prefix; a piece that
    does not start the text must not get it either."""
    from doubles.sglang_double import CHATML_TEMPLATE, SPECIALS

    tok = _trained_tokenizer(
        tmp_path, specials=SPECIALS, template=CHATML_TEMPLATE, eos="<|im_end|>", metaspace=True
    )
    assert tok.pieces.boundaries
    text = tok.render(first_messages(), add_generation_prompt=True)
    whole = tok.encode(text)
    assert tok.encode("<|im_end|>user") != tok.encode("<|im_end|>") + tok.encode("user")
    assert tok.encode_prompt(text) == whole
    _assert_pieces_exact(tok)


def test_unsafe_cut_tokens_are_not_used(tmp_path: Path) -> None:
    """An added token that contains a template token (or one that strips whitespace) would
    match differently in the whole text: such tokens are never cut after, and the ids
    still equal the whole text's."""
    from tokenizers import AddedToken

    from doubles.sglang_double import CHATML_TEMPLATE, SPECIALS

    tok = _trained_tokenizer(
        tmp_path,
        specials=SPECIALS,
        template=CHATML_TEMPLATE,
        eos="<|im_end|>",
        added=[AddedToken("<|im_end|>\n<|im", normalized=False)],
    )
    assert "<|im_end|>" not in tok.pieces.boundaries
    _assert_pieces_exact(tok, episodes=100)
    strip = _trained_tokenizer(
        tmp_path / "strip",
        specials=[],
        template=CHATML_TEMPLATE,
        eos="<|im_end|>",
        added=[
            AddedToken("<|im_start|>", rstrip=True, normalized=False, special=True),
            AddedToken("<|im_end|>", lstrip=True, normalized=False, special=True),
        ],
    )
    assert strip.pieces.boundaries == {}
    _assert_pieces_exact(strip, episodes=50)
    assert strip.pieces.whole > 0


def test_pieces_fall_back_to_the_whole_text(tok: ChatTokenizer, tmp_path: Path) -> None:
    """When a piece's ids do not end at its cut token (here: the tokenizer stops splitting
    out special tokens), the encoder tokenizes the whole text and stops cutting."""
    fresh = ChatTokenizer.from_dir(build_tiny_tokenizer(tmp_path / "tok"))
    text = fresh.render(first_messages(), add_generation_prompt=True)
    fresh.tokenizer.encode_special_tokens = True
    assert fresh.encode_prompt(text) == fresh.encode(text)
    assert fresh.pieces.whole == 1
    assert fresh.encode_prompt(text) == fresh.encode(text)
    assert fresh.pieces.whole == 2


def test_pieces_equal_whole_text_smollm2() -> None:
    """The real SmolLM2 tokenizer and template (when its folder is in the cache)."""
    folder = Path.home() / ".cache" / "gymux" / "models" / "smollm2-135m-instruct"
    if not (folder / "tokenizer.json").is_file():
        pytest.skip(f"no SmolLM2 folder at {folder}")
    tok = ChatTokenizer.from_dir(folder)
    assert tok.pieces.boundaries
    _assert_pieces_exact(tok, episodes=200)


def test_no_cutting_when_the_tokenizer_truncates_or_pads(tmp_path: Path) -> None:
    folder = build_tiny_tokenizer(tmp_path / "tok")
    from tokenizers import Tokenizer

    for setting in ("truncation", "padding"):
        raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
        if setting == "truncation":
            raw.enable_truncation(max_length=8)
        else:
            raw.enable_padding(length=4096)
        config = json.loads((folder / "tokenizer_config.json").read_text())
        tok = ChatTokenizer(raw, config["chat_template"], eos_token="<|im_end|>")
        assert tok.pieces.boundaries == {}
        text = tok.render(first_messages(), add_generation_prompt=True)
        assert tok.encode_prompt(text) == tok.encode(text)


def test_token_data_joins_the_buffers_as_the_generic_packing_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a little-endian host TokenData's fields are joined straight from the pieces' and
    the ledger's buffers; the generic packing (any host) gives the same bytes."""
    import gymux.policies.tokens as tokens_module
    from gymux.stores.codec import pack_float32

    tok = ChatTokenizer.from_dir(build_tiny_tokenizer(tmp_path / "tok"))
    ledger = TokenLedger(tok)
    msgs = [
        Message(role="user", content="Solve the maze. " * 80),
        Message(role="assistant", content="OK"),
        Message(role="user", content="You are at (1, 2)."),
    ]
    ledger.prompt_for(msgs)
    out = [*tok.encode("Thought: x\nAction: move up"), tok.eos_id]
    ledger.append_generated(out, [-0.5 - i / 8 for i in range(len(out))])
    ledger.prompt_for(
        [*msgs, Message(role="assistant", content="x"), Message(role="user", content="Moved.")]
    )
    import sys

    assert tokens_module._NATIVE_LE is (sys.byteorder == "little")  # the joined path here
    fast = ledger.token_data()
    monkeypatch.setattr(tokens_module, "_NATIVE_LE", False)
    generic = ledger.token_data()
    assert fast == generic
    assert fast.ids == pack_int32(ledger.ids) and fast.loss_mask == pack_uint8(ledger.loss_mask)
    assert fast.logprobs == pack_float32(ledger.logprobs)
    assert all(type(v) is bytes for v in (fast.ids, fast.loss_mask, fast.logprobs))
