"""Token-exact prompts: ids that only ever grow, with logprobs and a loss mask beside them.

Training on trajectories needs exactly the tokens the model saw and produced. A
:class:`TokenLedger` (one per episode) builds the prompt as token ids:

* **Turn 0**: the tokenizer's chat template (``tokenizer_config.json`` ``chat_template``, a
  Jinja2 template rendered the way ``transformers`` renders it) is applied to the first
  messages (instruction, ``"OK"``, first observation) with ``add_generation_prompt``, and the
  text is tokenized. Episodes of one env differ only in the first observation, so the
  template is rendered once per distinct start (the messages before the last), with a probe
  for the last message, and checked against a real rendering; each episode then splices its
  observation into that text (:meth:`ChatTokenizer.prompt_pieces`). A template that does not
  carry the probe verbatim (one that trims or rewrites content) is rendered every time.
* **Every later turn**: the ids the server generated are appended as they are (never
  re-tokenized), then each new observation is appended as its own user turn. The per-turn
  wrapper comes from the template itself (:meth:`ChatTokenizer.user_turn_suffix`): the text
  the template puts after an assistant message's content (its closing, e.g.
  ``<|im_end|>\\n``), then the user message, then the generation prompt. When the model's
  output already ends with the closing's first token (it stopped on EOS), that token is not
  added again.

Prompt text is tokenized piece by piece (:class:`PieceEncoder`): the text is cut right
after each of the template's special tokens (``<|im_end|>``, ``<|im_start|>``...), where the
tokenizer itself splits it, and each piece's ids are cached by the piece's exact text. The
instruction, the same for every episode of an env, is tokenized once; a new episode only
tokenizes its own observation, and a later turn only the piece that holds its observation
(the template's wrapper around it comes from the cache). The ids are the same as
tokenizing the whole text at once (the cut points are chosen and checked so that this
holds; see :class:`PieceEncoder`).

Each cached piece keeps its ids as a typed array and as JSON (:class:`Piece`), and a ledger
refers to the pieces of its turn-0 prompt instead of copying them: thousands of episodes of
one env share one copy of its instruction's ids, and a prompt's JSON is written from the
pieces' JSON (:meth:`PromptIds.json_parts`) without converting ids again.

The whole history is never re-tokenized, so ``ids``, ``logprobs`` (0.0 on tokens the model
did not generate) and ``loss_mask`` (1 exactly on generated tokens) line up with what the
server received and returned. :meth:`TokenLedger.token_data` exports them as
:class:`gymux.trajectory.TokenData`.

Tokenizers load from a local model folder (:meth:`ChatTokenizer.from_dir`), with the
``tokenizers`` and ``jinja2`` packages (the ``sglang-client`` extra); nothing is downloaded.
The folder holds ``tokenizer.json``, ``tokenizer_config.json`` (``bos_token``/``eos_token``;
``special_tokens_map.json`` when they are not there) and the chat template, found where
``transformers`` looks for it, first match wins:

1. ``chat_template.jinja``: what ``save_pretrained`` writes since transformers 4.50/5;
2. ``tokenizer_config.json`` ``chat_template``: the older layout (a string, or a list of
   named templates of which ``default`` is used);
3. ``chat_template.json`` ``{"chat_template": ...}``: the older processor layout.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import msgspec
import structlog

from gymux.errors import PolicyError, PolicyOptionsError
from gymux.messages import Message, PolicyRequest, PolicyResponse
from gymux.trajectory import TokenData, pack_float32, pack_int32, pack_uint8

__all__ = [
    "ChatTokenizer",
    "EpisodeLedgers",
    "Piece",
    "PieceEncoder",
    "PromptIds",
    "TokenLedger",
    "context_limit_response",
    "load_tokenizer",
    "prepare_all",
]

_P = TypeVar("_P")
_PROBE = "\x00GYMUX-PROBE\x00"
_UNSEEN = object()


def _start_key(messages: Sequence[Message]) -> tuple[tuple[str, str], ...]:
    """What turn-0 prompts of one start share (the messages before the last): the key of
    :meth:`ChatTokenizer.prompt_pieces`' per-start cache."""
    return tuple((m.role, m.content) for m in messages[:-1])


_HEADS = 256  # distinct turn-0 starts kept by ChatTokenizer.prompt_pieces (then cleared)
_log = structlog.get_logger("gymux.policies.tokens")


def _token_text(value: object) -> str | None:
    """``bos_token``/``eos_token`` in tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object file's content; ``{}`` when the file is absent."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise PolicyError(f"cannot read {str(path)!r}: {exc}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise PolicyError(f"{str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise PolicyError(f"{str(path)!r} is not a JSON object")
    return data


def _template_text(value: object) -> str | None:
    """A ``chat_template`` value: a string, or named templates of which ``default`` is used."""
    if isinstance(value, list):  # [{"name": ..., "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default")
    return value if isinstance(value, str) and value.strip() else None


def _find_chat_template(folder: Path, config: dict[str, Any]) -> str:
    """The folder's chat template, looked up where transformers looks (module docstring)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        try:
            text = jinja.read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicyError(f"cannot read {str(jinja)!r}: {exc}") from exc
        if text.strip():
            return text
    template = _template_text(config.get("chat_template"))
    if template is None:
        template = _template_text(
            _read_json_object(folder / "chat_template.json").get("chat_template")
        )
    if template is None:
        raise PolicyError(
            f"{str(folder)!r} has no chat template (looked for chat_template.jinja, "
            "'chat_template' in tokenizer_config.json, and chat_template.json)"
        )
    return template


_JSON = msgspec.json.Encoder()


class Piece:
    """The ids of a piece of text, as a typed array and as JSON without the brackets
    (``1,2,3``); immutable once made, shared by every prompt that contains the piece."""

    __slots__ = ("ids", "json", "n")

    def __init__(self, ids: Sequence[int]) -> None:
        self.ids: array[int] = array("i", ids)
        self.json: bytes = _JSON.encode(ids)[1:-1] if ids else b""
        self.n = len(self.ids)

    def __len__(self) -> int:
        return self.n


class Frame(NamedTuple):
    """What :meth:`PieceEncoder.frame` keeps of the text around a varying part: the cut
    token before it (``lead``), the text between that token and the part (``before``, no
    cut token in it), the text after the part (``after``), that text up to and including
    its first cut token (``head_of_after``, that token: ``last``), and the pieces of the
    rest of it (``tail``)."""

    lead: str | None
    before: str
    after: str
    head_of_after: str
    last: str | None
    tail: tuple[Piece, ...]

    def key(self, content: str) -> PieceKey:
        """The piece that holds ``content`` (the one :meth:`PieceEncoder.framed` looks up)."""
        return (self.lead, self.before + content + self.head_of_after, self.last)


#: A piece to look up or tokenize: the cut token it follows (``None``: the text's start),
#: its text, and the cut token it must end with (``None``: none).
PieceKey = tuple[str | None, str, str | None]


class PieceEncoder:
    """Tokenizes chat-template text piece by piece, caching each piece's ids by its text.

    A ``tokenizers`` tokenizer first cuts its input at every added token (``<|im_end|>``...)
    and then normalizes, pre-tokenizes and tokenizes each stretch between them on its own,
    so the ids of a text are the ids of its pieces when it is cut right after such a token.
    Only two things of a stretch depend on what precedes it: whether it starts the input
    (a ``Metaspace`` pre-tokenizer with ``prepend_scheme="first"``) and whether the token
    before it strips the whitespace that follows it. A piece that does not start the text
    is therefore tokenized behind the very token that ends the piece before it, whose id
    is then dropped: the piece sees the same context as in the whole text.

    The cut tokens (``boundaries``) are the added tokens given (those of the chat template)
    that the tokenizer matches the same way wherever they stand: not ``single_word``, not
    ``normalized``, no ``lstrip``/``rstrip``, and no other added token contains them or
    starts before them and ends inside them (a longer or earlier match would win there).
    Each piece's ids are checked as they are made (the lead token's id first, the piece's
    own cut token's id last); a piece that fails the check makes :meth:`encode` tokenize
    the whole text at once, and the encoder stops cutting (a warning is logged once).

    The cache keeps the ``capacity`` pieces used last: an env's instruction is one piece
    (or a few), the same for every episode of that env, so it is tokenized once.
    """

    def __init__(
        self, tokenizer: Any, special_texts: Sequence[str] = (), *, capacity: int = 4096
    ) -> None:
        self.tokenizer = tokenizer
        self.capacity = capacity
        self.boundaries = _boundary_tokens(tokenizer, special_texts)
        self._cut = (
            re.compile("|".join(re.escape(t) for t in sorted(self.boundaries, key=len)[::-1]))
            if self.boundaries
            else None
        )
        self._cache: OrderedDict[tuple[str | None, str], Piece] = OrderedDict()
        self._lock = threading.Lock()  # a tokenizer may be used from worker threads too
        #: Pieces found in the cache, pieces tokenized, whole texts tokenized at once, and
        #: pieces tokenized ahead by :meth:`prefetch`.
        self.hits = 0
        self.misses = 0
        self.whole = 0
        self.prefetched = 0

    def _plain(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``, exactly ``tokenizer.encode(text, add_special_tokens=False)``."""
        out: list[int] = []
        for piece in self.encode_pieces(text):
            out.extend(piece.ids)
        return out

    def encode_pieces(self, text: str) -> list[Piece]:
        """The ids of ``text`` (as :meth:`encode`) as the cached :class:`Piece` objects of its
        pieces, in order (one new piece when the text is tokenized whole)."""
        if self._cut is None:
            self.whole += 1
            return [Piece(self._plain(text))]
        got = self.pieces_after(None, text)
        return got if got is not None else [self._give_up(text)]

    def pieces_after(self, lead: str | None, text: str) -> list[Piece] | None:
        """The pieces of ``text`` as it stands in a longer text right after the cut token
        ``lead`` (``None``: at its start); ``None`` when a piece fails its check or the
        encoder no longer cuts (the caller then tokenizes the whole text)."""
        cut = self._cut
        if cut is None:
            return None
        out: list[Piece] = []
        start = 0
        for match in cut.finditer(text):
            end = match.end()
            token = match.group()
            piece = self._piece(lead, text[start:end], token)
            if piece is None:
                return None
            out.append(piece)
            lead, start = token, end
        if start < len(text):
            piece = self._piece(lead, text[start:], None)
            if piece is None:
                return None
            out.append(piece)
        return out

    def _piece(self, lead: str | None, piece: str, last: str | None) -> Piece | None:
        key = (lead, piece)
        cache = self._cache
        with self._lock:
            found = cache.get(key)
            if found is not None:
                cache.move_to_end(key)
                self.hits += 1
                return found
            self.misses += 1
        made = self._checked(lead, last, self._plain(piece if lead is None else lead + piece))
        if made is not None:
            self._store([(key, made)])
        return made

    def _store(self, made: Iterable[tuple[tuple[str | None, str], Piece]]) -> None:
        """Cache the pieces ``made`` by their keys, dropping the least recently used beyond
        ``capacity``."""
        cache = self._cache
        with self._lock:
            for key, piece in made:
                cache[key] = piece
            while len(cache) > self.capacity:
                cache.popitem(last=False)

    def _checked(self, lead: str | None, last: str | None, got: list[int]) -> Piece | None:
        """The piece of the ids ``got`` of ``lead + text``: without the lead token's id,
        which must come first, and ending with ``last``'s id; ``None`` when either fails."""
        if lead is not None:
            if not got or got[0] != self.boundaries[lead]:
                return None
            del got[0]
        if last is not None and (not got or got[-1] != self.boundaries[last]):
            return None
        return Piece(got)

    def prefetch(self, keys: Iterable[PieceKey]) -> int:
        """Tokenize the pieces ``keys`` names that are not cached yet in one call
        (``encode_batch``) and cache those that pass :meth:`_piece`'s checks; the number
        tokenized. A piece that fails them is not cached, so looking it up later fails as
        it would have.

        For a batch of turns about to be prepared one by one (see
        :meth:`EpisodeLedgers.prefetch`): one call for a batch's observation pieces instead of
        one per turn. The library runs the batch without Python in between (on its own
        threads unless ``TOKENIZERS_PARALLELISM=false``); measured in the rollout benchmark,
        ~12 us less client CPU per turn (docs/benchmarks.md).
        """
        encode = getattr(self.tokenizer, "encode_batch_fast", None) or getattr(
            self.tokenizer, "encode_batch", None
        )
        if self._cut is None or encode is None:
            return 0
        todo: dict[tuple[str | None, str], str | None] = {}
        with self._lock:
            for lead, piece, last in keys:
                if (lead, piece) not in self._cache:
                    todo[(lead, piece)] = last
        if not todo:
            return 0
        texts = [piece if lead is None else lead + piece for lead, piece in todo]
        encodings = encode(texts, add_special_tokens=False)
        checked = [
            (key, self._checked(key[0], last, list(enc.ids)))
            for (key, last), enc in zip(todo.items(), encodings, strict=True)
        ]
        self._store((key, piece) for key, piece in checked if piece is not None)
        self.prefetched += len(checked)
        return len(checked)

    def frame(self, before: str, after: str) -> tuple[tuple[Piece, ...], Frame] | None:
        """What texts ``before + content + after`` (starting the input) share, for
        :meth:`framed`: the pieces of ``before`` up to its last cut, and the :class:`Frame`
        around ``content``. ``None`` when the encoder no longer cuts or a fixed piece fails
        its check."""
        cut = self._cut
        if cut is None:
            return None
        matches = list(cut.finditer(before))
        lead: str | None = None
        head: list[Piece] = []
        if matches:
            lead = matches[-1].group()
            end = matches[-1].end()
            got = self.pieces_after(None, before[:end])
            if got is None:
                return None
            head, before = got, before[end:]
        match = cut.search(after)
        if match is None:
            return tuple(head), Frame(lead, before, after, after, None, ())
        last = match.group()
        tail = self.pieces_after(last, after[match.end() :])
        if tail is None:
            return None
        return tuple(head), Frame(lead, before, after, after[: match.end()], last, tuple(tail))

    def framed(self, frame: Frame, content: str) -> list[Piece] | None:
        """The pieces of ``frame.before + content + frame.after`` after ``frame.lead``, with
        one piece looked up or tokenized (the one holding ``content``) and the others
        made once. ``None`` as :meth:`pieces_after`.

        The ids are those of :meth:`pieces_after`; only where ``content`` itself holds cut
        tokens are its pieces coarser (one piece up to the frame's cut): a stretch is
        tokenized whole, so it is exact wherever it is cut, as long as it is tokenized
        behind the same lead and ends with the token it is cut after (both checked)."""
        if self._cut is None:
            return None
        piece = self._piece(*frame.key(content))
        if piece is None:
            return None
        return [piece, *frame.tail]

    def _give_up(self, text: str) -> Piece:
        _log.warning(
            "tokenizer_pieces_disabled",
            reason="a piece's ids did not end at its cut token; tokenizing whole texts",
            boundaries=sorted(self.boundaries),
        )
        self._cut = None
        with self._lock:
            self._cache.clear()
        self.whole += 1
        return Piece(self._plain(text))


def _boundary_tokens(tokenizer: Any, special_texts: Sequence[str]) -> dict[str, int]:
    """The added tokens among ``special_texts`` that text may be cut after (see
    :class:`PieceEncoder`), with their ids; empty when the tokenizer does not say."""
    if getattr(tokenizer, "encode_special_tokens", False):
        return {}  # added special tokens are not split out: no safe cut
    if getattr(tokenizer, "truncation", None) or getattr(tokenizer, "padding", None):
        return {}  # each piece would be truncated or padded on its own
    get = getattr(tokenizer, "get_added_tokens_decoder", None)
    if get is None:
        return {}
    try:
        added = {int(i): t for i, t in get().items()}
    except Exception:  # an unusual tokenizer object: no cutting
        return {}
    contents = {str(getattr(t, "content", "")) for t in added.values()}
    wanted = set(special_texts)
    out: dict[str, int] = {}
    for token_id, token in added.items():
        text = str(getattr(token, "content", ""))
        if not text or text not in wanted or tokenizer.token_to_id(text) != token_id:
            continue
        if any(getattr(token, flag, True) for flag in ("single_word", "normalized")) or any(
            getattr(token, flag, True) for flag in ("lstrip", "rstrip")
        ):
            continue
        if any(_overlaps(other, text) for other in contents if other and other != text):
            continue
        out[text] = token_id
    return out


def _overlaps(other: str, token: str) -> bool:
    """Whether a match of ``other`` could swallow or cut into ``token``: it contains it, or
    starts before it and ends inside it."""
    if token in other:
        return True
    return any(token.startswith(other[i:]) for i in range(1, len(other)))


class ChatTokenizer:
    """A ``tokenizers.Tokenizer`` plus its chat template.

    ``name`` is recorded on :class:`TokenData` (``tokenizer``).
    """

    def __init__(
        self,
        tokenizer: Any,
        chat_template: str,
        *,
        name: str = "",
        bos_token: str | None = None,
        eos_token: str | None = None,
    ) -> None:
        try:
            import jinja2.sandbox
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise PolicyError(
                "chat templates need jinja2 (pip install 'gymux[sglang-client]')"
            ) from exc

        def raise_exception(message: str) -> None:
            raise jinja2.exceptions.TemplateError(message)

        def tojson(value: object, indent: int | None = None) -> str:
            return json.dumps(value, indent=indent, ensure_ascii=False)

        # As transformers renders chat templates.
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        self._template = env.from_string(chat_template)
        self.tokenizer = tokenizer
        self.name = name
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.eos_id: int | None = tokenizer.token_to_id(eos_token) if eos_token else None
        self._closing_text, self._user_prefix, self._user_suffix = self._derive_turn_wrapper()
        self._closing_ids = tuple(self.encode(self._closing_text)) if self._closing_text else ()
        #: Tokenizes turn 0's prompts, piece by piece with a cache (:class:`PieceEncoder`).
        self.pieces = PieceEncoder(tokenizer, self._template_specials())
        # prompt_pieces: per distinct start of a turn-0 prompt, its fixed part (or None).
        self._heads: dict[tuple[tuple[str, str], ...], Any] = {}
        # user_turn_pieces: the user turn's fixed pieces before its content, and the frame
        # around the content (None: the text is cut whole each time); the closing ids as a
        # piece, whole and without the first id (the model's own EOS).
        self._turn = self.pieces.frame(self._user_prefix, self._user_suffix)
        self._closing = (Piece(self._closing_ids), Piece(self._closing_ids[1:]))

    @classmethod
    def from_dir(cls, path: str | Path) -> ChatTokenizer:
        """Load the tokenizer and chat template of a local model folder (module docstring)."""
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise PolicyError(
                "token-exact prompts need 'tokenizers' (gymux[sglang-client])"
            ) from exc
        folder = Path(path)
        if not (folder / "tokenizer.json").is_file():
            raise PolicyError(f"cannot load a tokenizer from {str(folder)!r}: no tokenizer.json")
        try:
            tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises its own Exception type
            raise PolicyError(f"cannot load a tokenizer from {str(folder)!r}: {exc}") from exc
        config = _read_json_object(folder / "tokenizer_config.json")
        special = _read_json_object(folder / "special_tokens_map.json")
        template = _find_chat_template(folder, config)
        return cls(
            tokenizer,
            template,
            name=str(folder),
            bos_token=_token_text(config.get("bos_token", special.get("bos_token"))),
            eos_token=_token_text(config.get("eos_token", special.get("eos_token"))),
        )

    # -- rendering and tokenizing ---------------------------------------------------------

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool) -> str:
        """The chat template applied to ``messages`` (text, not yet tokenized)."""
        return str(
            self._template.render(
                messages=[{"role": m.role, "content": m.content} for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
            )
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special tokens written in it are recognised, none added."""
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def _derive_turn_wrapper(self) -> tuple[str, str, str]:
        """Split the template's rendering of one later turn into its fixed parts.

        Renders ``[user, assistant(PROBE)]`` and ``[user, assistant(PROBE), user(PROBE)]``
        with the generation prompt; the text between the assistant's content and the user's
        content is the closing of the assistant turn plus the user turn's prefix, and what
        follows the user's content is the user turn's end plus the generation prompt.
        """
        head = [Message(role="user", content="hi"), Message(role="assistant", content=_PROBE)]
        base = self.render(head, add_generation_prompt=False)
        full = self.render(
            [*head, Message(role="user", content=_PROBE)], add_generation_prompt=True
        )
        first = full.find(_PROBE)
        second = full.find(_PROBE, first + len(_PROBE))
        if first < 0 or second < 0 or not full.startswith(base[: base.find(_PROBE)]):
            raise PolicyError("chat template does not render assistant and user turns in order")
        closing = base[base.find(_PROBE) + len(_PROBE) :]
        between = full[first + len(_PROBE) : second]
        if not between.startswith(closing):
            raise PolicyError("chat template: a later user turn does not follow the assistant's")
        return closing, between[len(closing) :], full[second + len(_PROBE) :]

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a rendered chat, as :meth:`encode` gives them, with the pieces it
        shares with earlier prompts (an env's instruction) taken from a cache."""
        return self.pieces.encode(text)

    def encode_prompt_pieces(self, text: str) -> list[Piece]:
        """:meth:`encode_prompt` as the shared :class:`Piece` objects of the text."""
        return self.pieces.encode_pieces(text)

    def prompt_pieces(self, messages: Sequence[Message]) -> list[Piece]:
        """Turn 0's prompt: ``messages`` rendered with the generation prompt, as the cached
        :class:`Piece` objects of its ids (the same as :meth:`encode_prompt_pieces` of
        :meth:`render`).

        Episodes of one env share everything but their first observation, the last message.
        The template is rendered once per distinct start (the messages before the last) with
        a probe as the last message; the text around the probe and the pieces of its fixed
        part are kept, and a later prompt with that start tokenizes only the piece that holds
        its observation. A start whose rendering does not carry the probe verbatim (a
        template that trims or rewrites the content) is rendered in full every time.
        """
        if not messages or messages[-1].role != "user":
            return self.encode_prompt_pieces(self.render(messages, add_generation_prompt=True))
        key = _start_key(messages)
        head = self._heads.get(key, _UNSEEN)
        if head is _UNSEEN:
            head = self._head_for(messages)
            if len(self._heads) >= _HEADS:
                self._heads.clear()
            self._heads[key] = head
        content = messages[-1].content
        if head is not None:
            pieces, frame = head
            tail = self.pieces.framed(frame, content)
            if tail is None:
                text = frame.before + content + frame.after
                tail = self.pieces.pieces_after(frame.lead, text)
            if tail is not None:
                return [*pieces, *tail]
        return self.encode_prompt_pieces(self.render(messages, add_generation_prompt=True))

    def _head_for(self, messages: Sequence[Message]) -> tuple[tuple[Piece, ...], Frame] | None:
        """What :meth:`prompt_pieces` keeps for the start ``messages[:-1]``: the pieces up to
        the rendering's last cut before the last message, and the :class:`Frame` around the
        last message's content; ``None`` when the template does not carry the content
        verbatim."""
        probe = f" \n{_PROBE}\t "  # surrounding whitespace: a template that trims shows it
        start = [*messages[:-1], Message(role="user", content=probe)]
        text = self.render(start, add_generation_prompt=True)
        if text.count(probe) != 1:
            return None
        before, after = text.split(probe)
        real = self.render(messages, add_generation_prompt=True)
        if real != before + messages[-1].content + after:
            return None
        return self.pieces.frame(before, after)

    def _template_specials(self) -> list[str]:
        """The added tokens the chat template writes (in a rendering of every role)."""
        probe = [Message(role="user", content="hi"), Message(role="assistant", content="ok")]
        texts = [self.render(probe, add_generation_prompt=True)]
        # Templates may refuse a system message (raise_exception).
        with contextlib.suppress(Exception):
            system = [Message(role="system", content="s"), *probe]
            texts.append(self.render(system, add_generation_prompt=True))
        text = "".join(texts)
        get = getattr(self.tokenizer, "get_added_tokens_decoder", None)
        try:
            added = [str(t.content) for t in get().values()] if get is not None else []
        except Exception:  # an unusual tokenizer object: no added tokens known
            added = []
        return [t for t in added if t and t in text]

    def user_turn_suffix(self, content: str, *, after_generated: Sequence[int]) -> list[int]:
        """Ids to append after the model's output ``after_generated`` for a new user turn."""
        out: list[int] = []
        for piece in self.user_turn_pieces(content, after_generated=after_generated):
            out.extend(piece.ids)
        return out

    def turn_piece_keys(
        self, prompts: Iterable[Sequence[Message]], users: Iterable[str]
    ) -> list[PieceKey]:
        """The pieces :meth:`prompt_pieces` of each of ``prompts`` and
        :meth:`user_turn_pieces` of each content in ``users`` will look up, as far as they
        are known without tokenizing (a turn-0 prompt whose start was seen before), for
        :meth:`PieceEncoder.prefetch`."""
        keys: list[PieceKey] = []
        for messages in prompts:
            if messages and messages[-1].role == "user":
                head = self._heads.get(_start_key(messages))  # None: unseen or rendered whole
                if head is not None:
                    keys.append(head[1].key(messages[-1].content))
        turn = self._turn
        if turn is not None:
            keys.extend(turn[1].key(content) for content in users)
        return keys

    def user_turn_pieces(self, content: str, *, after_generated: Sequence[int]) -> list[Piece]:
        """:meth:`user_turn_suffix` as :class:`Piece` objects: the ids closing the model's
        turn (those it did not emit itself), then the new user turn's pieces."""
        closing_ids = self._closing_ids
        emitted = bool(closing_ids and after_generated and after_generated[-1] == closing_ids[0])
        closing = self._closing[1] if emitted else self._closing[0]  # stopped on EOS: not again
        # In pieces (see PieceEncoder): the template's fixed parts are made once and only
        # the piece holding ``content`` is looked up or tokenized, one stretch of text
        # instead of three (measured: ~20% of a rollout turn's client CPU, most of it in
        # malloc), with no scan for cuts over the fixed parts.
        turn = self._turn
        if turn is not None:
            framed = self.pieces.framed(turn[1], content)
            if framed is not None:
                return [closing, *turn[0], *framed]
        text = self._user_prefix + content + self._user_suffix
        return [closing, *self.pieces.encode_pieces(text)]


def load_tokenizer(
    tokenizer: ChatTokenizer | str | Path | None, tokenizer_path: str | None, *, who: str
) -> ChatTokenizer:
    """A server policy's tokenizer: ``tokenizer`` (a :class:`ChatTokenizer` or a model
    folder), else the ``tokenizer_path`` option; :class:`PolicyOptionsError` when neither."""
    source = tokenizer if tokenizer is not None else tokenizer_path
    if source is None:
        raise PolicyOptionsError(
            f"{who} needs a tokenizer: tokenizer= (a ChatTokenizer or a model "
            "folder) or the tokenizer_path option"
        )
    return source if isinstance(source, ChatTokenizer) else ChatTokenizer.from_dir(source)


def _open_array(parts: Sequence[bytes]) -> list[bytes]:
    """``[b"[", part, b",", part...]``: a JSON array of ``parts`` without its ``]``."""
    out = [b"["]
    for part in parts:
        out += (part, b",")
    if len(out) > 1:
        out.pop()
    return out


class PromptIds:
    """A prompt's token ids as JSON fragments and their count (``len``).

    What a server policy holds while its request is in flight: thousands of in-flight
    prompts as lists of ints made every young garbage collection walk millions of list
    slots; bytes are not walked. The fragments are the shared turn-0 pieces of the episode's
    ledger (an env's instruction, one copy for all its episodes) and a snapshot of the rest:
    :meth:`json_parts` lets a request body be written with one copy of them.
    """

    __slots__ = ("_frags", "n")

    def __init__(self, ids: Sequence[int]) -> None:
        self._frags: tuple[bytes, ...] = (_JSON.encode(ids),)
        self.n = len(ids)

    @classmethod
    def of_parts(cls, parts: Sequence[bytes], n: int) -> PromptIds:
        """``n`` ids given as the JSON of consecutive runs of them, each without brackets
        and none empty (``[b"1,2", b"3"]``)."""
        self = cls.__new__(cls)
        self._frags = (*_open_array(parts), b"]")
        self.n = n
        return self

    def __len__(self) -> int:
        return self.n

    def json_parts(self) -> tuple[bytes, ...]:
        """Bytes whose concatenation is the ids' JSON array (``[1,2,3]``)."""
        return self._frags

    @property
    def json(self) -> msgspec.Raw:
        """The ids' JSON array (as :class:`msgspec.Raw`, which msgspec writes as it is)."""
        return msgspec.Raw(b"".join(self.json_parts()))

    def ids(self) -> list[int]:
        """The ids again (decoded from the JSON)."""
        return msgspec.json.decode(self.json, type=list[int])


_ZEROS_N = 4096
_ZEROS_F = array("f", bytes(4 * _ZEROS_N))
_ZEROS_B = array("B", bytes(_ZEROS_N))
#: Zero bytes to slice without copying (a memoryview), for up to _ZEROS_N float32s.
_ZEROS_BYTES = memoryview(bytes(4 * _ZEROS_N))
#: Whether the ledger's typed arrays already hold TokenData's packing: little-endian,
#: 4-byte int32 and float32.
_NATIVE_LE = sys.byteorder == "little" and array("i").itemsize == 4 and array("f").itemsize == 4


def _extend(out: array[Any], values: Sequence[Any]) -> None:
    """``out.extend(values)``; from a list (what a decoded answer holds) through
    ``fromlist``, which converts the same way at ~2x the speed (256 ids and logprobs:
    5.4 vs 12.5 us)."""
    if type(values) is list:
        out.fromlist(values)
    else:
        out.extend(values)


def _zeros_f(n: int) -> array[float]:
    return _ZEROS_F[:n] if n <= _ZEROS_N else array("f", bytes(4 * n))


def _zeros_b(n: int) -> array[int]:
    return _ZEROS_B[:n] if n <= _ZEROS_N else array("B", bytes(n))


class TokenLedger:
    """The token-exact record of one episode (see the module docstring).

    Use :meth:`prompt_for` before each server call (it appends the new observation and
    returns the prompt ids), then :meth:`append_generated` with what the server returned.

    The turn-0 prompt is kept as the tokenizer's shared :class:`Piece` objects (``head``);
    what follows it (generated ids, later observations) in the ledger's own typed arrays.
    """

    __slots__ = (
        "_consumed",
        "_head",
        "_head_json",
        "_head_n",
        "_ids",
        "_json",
        "_last_generated",
        "_logprobs",
        "_mask",
        "tokenizer",
    )

    def __init__(self, tokenizer: ChatTokenizer) -> None:
        self.tokenizer = tokenizer
        self._head: tuple[Piece, ...] | None = None  # None: turn 0 not rendered yet
        self._head_n = 0
        self._head_json: tuple[bytes, ...] = ()  # the head's pieces' JSON (none empty)
        # Typed arrays, not lists: the garbage collector does not traverse them (thousands
        # of episodes' ledgers of thousands of ids each made every young-generation
        # collection walk millions of list slots). They hold what follows the head.
        self._ids: array[int] = array("i")
        self._logprobs: array[float] = array("f")  # float32, as TokenData stores them
        self._mask: array[int] = array("B")
        # The same ids as JSON without the brackets (``1,2,3``), grown with them: a turn's
        # prompt is sent without encoding the whole history again.
        self._json = bytearray()
        self._consumed = 0  # messages already in the ledger
        # The last turn's output ids, as far as the next turn needs them (its last id), or
        # None before an output came.
        self._last_generated: Sequence[int] | None = None

    def __len__(self) -> int:
        return self._head_n + len(self._ids)

    def _head_ids(self) -> array[int]:
        out = array("i")
        for piece in self._head or ():
            out.extend(piece.ids)
        return out

    @staticmethod
    def _joined(head: array[Any], tail: array[Any]) -> array[Any]:
        out = array(tail.typecode, head)
        out.extend(tail)
        return out

    @property
    def ids(self) -> list[int]:
        """The episode's token ids so far (a copy)."""
        return self._joined(self._head_ids(), self._ids).tolist()

    @property
    def logprobs(self) -> list[float]:
        """One logprob per id: the model's on generated ids, 0.0 elsewhere (a copy; float32
        precision, as :meth:`token_data` stores them)."""
        return self._joined(_zeros_f(self._head_n), self._logprobs).tolist()

    @property
    def loss_mask(self) -> list[int]:
        """1 on generated ids, 0 elsewhere (a copy)."""
        return self._joined(_zeros_b(self._head_n), self._mask).tolist()

    def _add_json(self, part: bytes) -> None:
        """Append ids' JSON without brackets (``1,2``) to the prompt's JSON."""
        if self._json:
            self._json += b","
        self._json += part

    def _extend_ids(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        _extend(self._ids, ids)
        self._add_json(_JSON.encode(ids)[1:-1])

    def _extend_pieces(self, pieces: Sequence[Piece]) -> None:
        """Append prompt ids (no logprob, no loss) given as pieces, whose JSON the pieces
        already hold."""
        n = 0
        for piece in pieces:
            if piece.n:
                self._ids.extend(piece.ids)
                self._add_json(piece.json)
                n += piece.n
        self._logprobs.extend(_zeros_f(n))
        self._mask.extend(_zeros_b(n))

    def prompt_for(self, messages: Sequence[Message]) -> list[int]:
        """:meth:`advance` to ``messages``, then the full prompt ids."""
        self.advance(messages)
        return self.ids

    def prompt_ids(self) -> PromptIds:
        """The prompt so far as :class:`PromptIds` (the head's shared JSON, and a snapshot of
        the rest's, kept up to date as ids come)."""
        tail = (bytes(self._json),) if self._json else ()
        return PromptIds.of_parts((*self._head_json, *tail), len(self))

    def advance(self, messages: Sequence[Message]) -> None:
        """Bring the ledger up to ``messages`` (then :meth:`prompt_ids` or :attr:`ids`).

        The first call renders the chat template over all of ``messages``. Later calls
        expect the messages seen so far, then the assistant message this ledger generated,
        then one or more new user messages, each appended as its own turn.
        """
        if self._head is None:
            self._head = tuple(self.tokenizer.prompt_pieces(messages))
            self._head_n = sum(piece.n for piece in self._head)
            self._head_json = tuple(piece.json for piece in self._head if piece.n)
            self._consumed = len(messages)
            return
        new = list(messages[self._consumed :])
        if not new or new[0].role != "assistant" or self._last_generated is None:
            raise PolicyError(
                f"token ledger out of step: expected the model's answer then new observations "
                f"after message {self._consumed}, got roles {[m.role for m in new]}"
            )
        after: Sequence[int] = self._last_generated
        for message in new[1:]:
            if message.role != "user":
                raise PolicyError(f"token ledger: unexpected {message.role!r} message mid-episode")
            self._extend_pieces(
                self.tokenizer.user_turn_pieces(message.content, after_generated=after)
            )
            after = []
        self._consumed = len(messages)
        self._last_generated = None

    def append_generated(self, ids: Sequence[int], logprobs: Sequence[float] | None) -> None:
        """Append the server's output ids (and their logprobs) exactly as returned."""
        if logprobs is not None and len(logprobs) != len(ids):
            raise PolicyError(f"{len(ids)} output ids but {len(logprobs)} logprobs")
        self._extend_ids(ids)
        if logprobs is not None:
            _extend(self._logprobs, logprobs)
        else:
            self._logprobs.extend(_zeros_f(len(ids)))
        self._mask.frombytes(b"\x01" * len(ids))
        self._last_generated = (ids[-1],) if ids else ()

    def fits(self, max_new_tokens: int, context_length: int) -> bool:
        return len(self) + max_new_tokens <= context_length

    def token_data(self) -> TokenData:
        head_n = self._head_n
        if _NATIVE_LE and head_n <= _ZEROS_N:
            # The arrays' own bytes are the packed little-endian values: each field is one
            # join (one copy) of the head pieces' and the ledger's buffers, with no array
            # built on the way (an episode's ~2k-token record was copied three times).
            head = [piece.ids for piece in self._head or ()]
            return TokenData(
                ids=b"".join([*head, self._ids]),
                loss_mask=b"".join([_ZEROS_BYTES[:head_n], self._mask]),
                logprobs=b"".join([_ZEROS_BYTES[: 4 * head_n], self._logprobs]),
                tokenizer=self.tokenizer.name,
            )
        return TokenData(
            ids=pack_int32(self._joined(self._head_ids(), self._ids)),
            loss_mask=pack_uint8(self._joined(_zeros_b(self._head_n), self._mask)),
            logprobs=pack_float32(self._joined(_zeros_f(self._head_n), self._logprobs)),
            tokenizer=self.tokenizer.name,
        )


class EpisodeLedgers:
    """The :class:`TokenLedger` of every running episode of one token-exact policy.

    What a token-exact server policy does around each call: :meth:`prompt_ids` before it (a
    fresh ledger on turn 0; the answer ``context_limit`` when the prompt plus
    ``max_new_tokens`` would not fit), :meth:`record` after it, :meth:`finish` when the
    episode ends.
    """

    __slots__ = ("_ledgers", "tokenizer")

    def __init__(self, tokenizer: ChatTokenizer) -> None:
        self.tokenizer = tokenizer
        self._ledgers: dict[str, TokenLedger] = {}

    def __len__(self) -> int:
        return len(self._ledgers)

    def prompt_ids(
        self, request: PolicyRequest, *, max_new_tokens: int, context_length: int | None
    ) -> PromptIds | PolicyResponse:
        """The prompt of ``request``'s turn as :class:`PromptIds` (JSON, not re-encoded per
        turn), or a ``context_limit`` answer."""
        ledger = self._ledgers.get(request.episode_id)
        if ledger is None or request.turn == 0:
            ledger = self._ledgers[request.episode_id] = TokenLedger(self.tokenizer)
        ledger.advance(request.messages)
        if context_length is not None and not ledger.fits(max_new_tokens, context_length):
            return context_limit_response(len(ledger))
        return ledger.prompt_ids()

    def prefetch(self, requests: Sequence[PolicyRequest]) -> int:
        """Tokenize ahead, in one call, the pieces :meth:`prompt_ids` will look up for a
        batch of ``requests`` (each turn's new observations; turn 0's, once its env's start
        was seen): :meth:`PieceEncoder.prefetch`. Changes no ledger; the number tokenized."""
        prompts: list[Sequence[Message]] = []
        users: list[str] = []
        for request in requests:
            messages = request.messages
            ledger = self._ledgers.get(request.episode_id)
            if ledger is None or request.turn == 0 or ledger._head is None:
                prompts.append(messages)
            else:  # after the model's answer, the new user messages (see TokenLedger.advance)
                users.extend(
                    m.content for m in messages[ledger._consumed + 1 :] if m.role == "user"
                )
        keys = self.tokenizer.turn_piece_keys(prompts, users)
        return self.tokenizer.pieces.prefetch(keys) if keys else 0

    def record(self, episode_id: str, ids: Sequence[int], logprobs: Sequence[float] | None) -> None:
        """Append what the server generated for ``episode_id``'s current turn.

        Raises :class:`PolicyError` when the episode was finished meanwhile or the logprobs
        do not match the ids.
        """
        ledger = self._ledgers.get(episode_id)
        if ledger is None:
            raise PolicyError(f"episode {episode_id} was finished while generating")
        ledger.append_generated(ids, logprobs)

    def finish(self, episode_id: str) -> TokenData | None:
        """Take the episode's :class:`TokenData` and forget it (``None``: never seen)."""
        ledger = self._ledgers.pop(episode_id, None)
        return ledger.token_data() if ledger is not None else None


def prepare_all(
    requests: Sequence[PolicyRequest],
    prepare: Callable[[PolicyRequest], _P | PolicyResponse],
) -> tuple[list[PolicyResponse | BaseException | None], list[tuple[int, _P]]]:
    """``prepare`` each request of a batch: the answers already known, by index (a
    ``context_limit`` answer, or the :class:`PolicyError` of a ledger out of step; ``None``
    for the others), and the ``(index, prompt ids)`` of the requests to generate for."""
    out: list[PolicyResponse | BaseException | None] = [None] * len(requests)
    items: list[tuple[int, _P]] = []
    for i, request in enumerate(requests):
        try:
            prepared = prepare(request)
        except PolicyError as exc:
            out[i] = exc
            continue
        if isinstance(prepared, PolicyResponse):
            out[i] = prepared
        else:
            items.append((i, prepared))
    return out, items


def context_limit_response(prompt_tokens: int | None = None) -> PolicyResponse:
    """The answer that ends an episode ``context_limit``: the prompt no longer fits."""
    return PolicyResponse(
        text="", finish_reason="context_limit", prompt_tokens=prompt_tokens, completion_tokens=0
    )
