"""The course corpus: a seeded multi-domain text generator with per-character labels.

Nothing is downloaded. ``make_corpus`` writes documents from four small generators whose
statistics differ on purpose, so that "does an expert specialize in a domain or in a kind of
character?" can be measured against ground truth later in the course:

=============  ====================================================  ===========================
domain         what a document looks like                            planted structure
=============  ====================================================  ===========================
arithmetic     ``37+48=85``, ``7*8=56``, one equation per line       correct answers; the times
                                                                     table is 121 facts
code           small Python-like functions, 4-space indentation      syntax, name reuse
english        ``The small cat sees a red ball near the old tree.``  a tiny grammar
records        ``id=4821; name=Maria Lopez; born=1987-04-12; ...``   fixed fields; a roster of
                                                                     people (``World``) whose
                                                                     facts never change
=============  ====================================================  ===========================

Documents of different domains are shuffled together, so a training window often crosses a
document boundary and a batch mixes domains. Every character carries two labels: its domain
(``DOMAINS``) and its character class (``CHAR_CLASSES``: letter, digit, whitespace,
punctuation, newline). The generated text is ASCII, so one character is one byte and the
byte-level tokenizer keeps the labels aligned with the tokens one to one.

Train and validation splits are made of whole documents, ``val_fraction`` of each domain, and
never share one (nor even two documents with the same text); the roster's facts are shared on
purpose, as knowledge to be learned. ``load_text_file`` turns any UTF-8 text file a reader brings into
the same ``Corpus`` structure, with one domain called ``"text"``.

Shape alphabet: B batch, T sequence (window) length, L tokens in a split, V vocabulary.

Taught in: notebooks/04_train_tiny_moe.ipynb (and measured against in notebook 05).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

DOMAINS = ("arithmetic", "code", "english", "records")
CHAR_CLASSES = ("letter", "digit", "whitespace", "punctuation", "newline")
LETTER, DIGIT, WHITESPACE, PUNCTUATION, NEWLINE = range(len(CHAR_CLASSES))


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


class ByteTokenizer:
    """Byte-level tokenizer: a token is one UTF-8 byte, so V = 256 and nothing is unknown.

    On the ASCII course corpus a byte is a character, so per-character labels are per-token
    labels. Decoding replaces an incomplete multi-byte sequence (a model can emit one) with
    U+FFFD rather than failing.

    Example:
        >>> tok = ByteTokenizer()
        >>> tok.encode("hi\\n")
        [104, 105, 10]
        >>> tok.decode([104, 105, 10])
        'hi\\n'
    """

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, tokens: list[int] | torch.Tensor) -> str:
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.tolist()
        return bytes(tokens).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=256)"


def char_class(char: str) -> int:
    """Index into ``CHAR_CLASSES`` of one character (any Unicode character has a class)."""
    if char == "\n":
        return NEWLINE
    if char.isspace():
        return WHITESPACE
    if char.isdigit():
        return DIGIT
    if char.isalpha():
        return LETTER
    return PUNCTUATION


# --------------------------------------------------------------------------------------------
# The four domain generators. Each takes a random.Random and returns one document ending in
# "\n". They draw only from ``rng`` so the corpus is a pure function of the seed.
# --------------------------------------------------------------------------------------------

_NAMES_FIRST = (
    "Ada Alan Anna Ben Carla David Elena Farid Grace Hugo Ines Jonas Kim Lena Maria Noah Omar"
    " Priya Quinn Rosa Sami Tara Uma Victor Wei Yara Zoe"
).split()
_NAMES_LAST = (
    "Abe Baker Chen Diaz Evans Fischer Garcia Hansen Ito Jones Kowalski Lopez Martin Nguyen"
    " Okafor Patel Rossi Silva Tanaka Weber Young Zhang"
).split()
_CITIES = "Paris Lagos Lima Oslo Pune Kyoto Quito Cairo Dublin Hanoi Porto Seoul".split()
_DETERMINERS = ("the", "a", "every", "one", "that")
_ADJECTIVES = "small old red quiet happy green brave tired clever dark warm tall".split()
_NOUNS = "cat dog bird child river tree house farmer ball garden teacher boat".split()
_VERBS = "sees finds follows likes carries watches helps paints builds moves".split()
_PREPOSITIONS = ("near", "under", "behind", "beside", "with", "over")
_CODE_VERBS = ("scale", "count", "merge", "clip", "sum", "find", "sort", "load")
_CODE_NOUNS = ("items", "values", "rows", "names", "scores", "parts", "keys")
_CODE_VARS = ("x", "y", "n", "total", "count", "value", "result", "step")


@dataclass(frozen=True)
class World:
    """Facts shared by every document of a corpus, drawn once from its seed.

    ``people`` is the records' roster: each person has a fixed id, name, birth date and city, so
    a record's fields after its id are facts to be remembered, not noise. Knowledge like this is
    where extra parameters pay off, which is the case an MoE makes for itself.
    """

    people: tuple[str, ...]


def _make_world(rng: random.Random, n_people: int) -> World:
    people = []
    ids = rng.sample(range(1000, 10000), n_people)
    for person_id in ids:
        first, last = rng.choice(_NAMES_FIRST), rng.choice(_NAMES_LAST)
        year, month, day = rng.randint(1950, 2009), rng.randint(1, 12), rng.randint(1, 28)
        people.append(
            f"id={person_id}; name={first} {last}; born={year}-{month:02d}-{day:02d};"
            f" city={rng.choice(_CITIES)};"
        )
    return World(tuple(people))


def _arithmetic_document(rng: random.Random, world: World) -> str:
    lines = []
    for _ in range(rng.randint(10, 24)):
        op = rng.choice("+-*")
        if op == "*":
            a, b = rng.randint(2, 12), rng.randint(2, 12)  # the times table: 121 facts
        else:
            a, b = rng.randint(0, 99), rng.randint(0, 99)
            if op == "-" and b > a:
                a, b = b, a  # keep answers non-negative: one fewer rule to learn
        answer = {"+": a + b, "-": a - b, "*": a * b}[op]
        lines.append(f"{a}{op}{b}={answer}\n")
    return "".join(lines)


def _code_document(rng: random.Random, world: World) -> str:
    name = f"{rng.choice(_CODE_VERBS)}_{rng.choice(_CODE_NOUNS)}"
    arg = rng.choice(_CODE_NOUNS)
    k = rng.randint(1, 9)
    acc, var = rng.sample(_CODE_VARS, 2)
    lines = [f"def {name}({arg}, k={k}):", f"    {acc} = 0", f"    for {var} in {arg}:"]
    for _ in range(rng.randint(1, 3)):
        op = rng.choice(("+=", "-=", "*="))
        lines.append(f"        {acc} {op} {var} * {rng.randint(1, 9)}")
    if rng.random() < 0.5:
        lines.append(f"        if {acc} > {rng.randint(10, 99)}:")
        lines.append(f"            {acc} = {acc} % k")
    lines.append(f"    return {acc}")
    return "\n".join(lines) + "\n"


def _noun_phrase(rng: random.Random) -> str:
    words = [rng.choice(_DETERMINERS)]
    if rng.random() < 0.6:
        words.append(rng.choice(_ADJECTIVES))
    words.append(rng.choice(_NOUNS))
    return " ".join(words)


def _english_document(rng: random.Random, world: World) -> str:
    sentences = []
    for _ in range(rng.randint(2, 5)):
        sentence = f"{_noun_phrase(rng)} {rng.choice(_VERBS)} {_noun_phrase(rng)}"
        if rng.random() < 0.4:
            sentence += f" {rng.choice(_PREPOSITIONS)} {_noun_phrase(rng)}"
        sentences.append(sentence[0].upper() + sentence[1:] + ".")
    return " ".join(sentences) + "\n"


def _records_document(rng: random.Random, world: World) -> str:
    lines = []
    for _ in range(rng.randint(1, 3)):
        score = rng.randint(0, 999) / 10
        lines.append(f"{rng.choice(world.people)} score={score:.1f}\n")
    return "".join(lines)


GENERATORS: dict[str, Callable[[random.Random, World], str]] = {
    "arithmetic": _arithmetic_document,
    "code": _code_document,
    "english": _english_document,
    "records": _records_document,
}


# --------------------------------------------------------------------------------------------
# Corpus and splits
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    """One document: its text and the index of its domain in the corpus's ``domain_names``."""

    text: str
    domain: int


@dataclass(frozen=True)
class Split:
    """A split as flat tensors, one entry per token, in document order.

    Attributes:
        tokens: (L,) uint8 byte tokens.
        domain: (L,) uint8 domain label of each token.
        char_class: (L,) uint8 character-class label of each token (``CHAR_CLASSES``).
        doc_index: (L,) int32 index into ``documents`` of the document the token belongs to.
        documents: the documents, in the order they were concatenated.
    """

    tokens: torch.Tensor
    domain: torch.Tensor
    char_class: torch.Tensor
    doc_index: torch.Tensor
    documents: tuple[Document, ...]

    def __len__(self) -> int:
        return self.tokens.numel()

    @property
    def text(self) -> str:
        return "".join(doc.text for doc in self.documents)


@dataclass(frozen=True)
class Corpus:
    """Train and validation splits plus the names their labels index into."""

    train: Split
    val: Split
    domain_names: tuple[str, ...]
    char_class_names: tuple[str, ...] = CHAR_CLASSES

    def __repr__(self) -> str:
        return (
            f"Corpus(train={len(self.train):,} tokens / {len(self.train.documents):,} docs,"
            f" val={len(self.val):,} tokens / {len(self.val.documents):,} docs,"
            f" domains={self.domain_names})"
        )


def _build_split(documents: list[Document]) -> Split:
    """Concatenate documents into flat token and label tensors."""
    tokens: list[int] = []
    domains: list[int] = []
    classes: list[int] = []
    doc_index: list[int] = []
    for i, doc in enumerate(documents):
        for char in doc.text:
            n_bytes = len(char.encode("utf-8"))
            tokens.extend(char.encode("utf-8"))
            # A multi-byte character gives each of its bytes the character's labels.
            classes.extend([char_class(char)] * n_bytes)
            domains.extend([doc.domain] * n_bytes)
            doc_index.extend([i] * n_bytes)
    return Split(
        tokens=torch.tensor(tokens, dtype=torch.uint8),
        domain=torch.tensor(domains, dtype=torch.uint8),
        char_class=torch.tensor(classes, dtype=torch.uint8),
        doc_index=torch.tensor(doc_index, dtype=torch.int32),
        documents=tuple(documents),
    )


def _split_documents(
    documents: list[Document], val_fraction: float, rng: random.Random
) -> tuple[list[Document], list[Document]]:
    """Hold out whole documents, ``val_fraction`` of each domain (at least one per domain).

    Stratifying by domain keeps every domain in the validation split even for a small corpus.
    Validation documents whose text also occurs in train are dropped: a short generated
    document can repeat by chance, and validation must measure generalization.
    """
    val_ids: set[int] = set()
    for domain in sorted({doc.domain for doc in documents}):
        ids = [i for i, doc in enumerate(documents) if doc.domain == domain]
        rng.shuffle(ids)
        val_ids.update(ids[: max(1, round(val_fraction * len(ids)))])
    train = [doc for i, doc in enumerate(documents) if i not in val_ids]
    train_texts = {doc.text for doc in train}
    val = [doc for i, doc in enumerate(documents) if i in val_ids and doc.text not in train_texts]
    return train, val


def make_corpus(
    n_chars: int = 400_000,
    val_fraction: float = 0.1,
    seed: int = 0,
    domains: tuple[str, ...] = DOMAINS,
    n_people: int = 64,
) -> Corpus:
    """Generate the course corpus: a pure function of its arguments.

    Args:
        n_chars: generate documents until their total length reaches this many characters.
        val_fraction: fraction of the documents held out for validation (whole documents).
        seed: seed of the generator; the same seed gives the same corpus, byte for byte.
        domains: which generators to use (names from ``DOMAINS``), drawn uniformly per document.
        n_people: size of the records' roster (``World``): fewer people, more facts repeat.

    Returns:
        A ``Corpus`` whose ``domain_names`` is ``domains``.

    Example:
        >>> corpus = make_corpus(n_chars=5_000, seed=0)
        >>> corpus.domain_names
        ('arithmetic', 'code', 'english', 'records')
    """
    if not isinstance(n_chars, int) or n_chars < 1:
        raise ValueError(f"n_chars={n_chars!r} must be a positive integer")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must be strictly between 0 and 1")
    unknown = [name for name in domains if name not in GENERATORS]
    if unknown or not domains:
        raise ValueError(f"unknown domains {unknown}: choose from {', '.join(GENERATORS)}")
    rng = random.Random(seed)
    world = _make_world(rng, n_people)
    documents: list[Document] = []
    total = 0
    while total < n_chars:
        domain = rng.randrange(len(domains))
        text = GENERATORS[domains[domain]](rng, world)
        documents.append(Document(text, domain))
        total += len(text)
    train, val = _split_documents(documents, val_fraction, rng)
    return Corpus(_build_split(train), _build_split(val), tuple(domains))


def _chunk_text(text: str, chunk_chars: int) -> list[str]:
    """Cut text into consecutive pieces of about ``chunk_chars``, at a newline when there is one."""
    chunks = []
    start = 0
    while start < len(text):
        end = min(len(text), start + chunk_chars)
        if end < len(text):
            newline = text.rfind("\n", start + chunk_chars // 2, end)
            if newline != -1:
                end = newline + 1
        chunks.append(text[start:end])
        start = end
    return chunks


def load_text_file(path: str | Path, val_fraction: float = 0.1, seed: int = 0) -> Corpus:
    """Load any UTF-8 plain-text file as a one-domain ``Corpus``.

    The text is cut into about 20 or more consecutive chunks ("documents", at most 2048
    characters each, broken at newlines); a seeded ``val_fraction`` of them is held out. Labels:
    every token has domain 0 (``"text"``) and the character class of its character.

    Raises:
        FileNotFoundError: the path does not exist.
        IsADirectoryError: the path is a folder.
        ValueError: the file is empty (or only whitespace), or is not UTF-8 text.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: give the path of a plain-text file")
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise ValueError(f"{path} is not a text file: it contains NUL bytes (binary data?)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not UTF-8 text: invalid byte at offset {error.start};"
            " convert it to UTF-8 first"
        ) from None
    if not text.strip():
        raise ValueError(f"{path} is empty: it needs some text to train on")
    chunk_chars = max(64, min(2048, len(text) // 20))
    documents = [Document(chunk, 0) for chunk in _chunk_text(text, chunk_chars)]
    if len(documents) < 2:
        raise ValueError(
            f"{path} is too short ({len(text)} characters) to split into train and validation"
        )
    train, val = _split_documents(documents, val_fraction, random.Random(seed))
    if not val:
        raise ValueError(f"{path}: every validation chunk repeats a training chunk")
    return Corpus(_build_split(train), _build_split(val), ("text",))


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """A batch of windows with next-token targets and the labels of the input tokens.

    Shape:
        x, y, domain, char_class: (B, T) long. ``y[:, t]`` is the token after ``x[:, t]``;
        ``domain`` and ``char_class`` label ``x`` (the token the router sees at position t).
    """

    x: torch.Tensor
    y: torch.Tensor
    domain: torch.Tensor
    char_class: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device) for t in (self.x, self.y, self.domain, self.char_class)))


def _check_window(split: Split, seq_len: int) -> None:
    if len(split) < seq_len + 1:
        raise ValueError(
            f"the split has {len(split)} tokens, fewer than seq_len + 1 = {seq_len + 1}:"
            " use more text or a shorter seq_len"
        )


def batch_at(split: Split, starts: torch.Tensor, seq_len: int) -> Batch:
    """The windows starting at ``starts`` (B,) as a ``Batch`` of (B, T) tensors."""
    index = starts[:, None] + torch.arange(seq_len + 1)  # (B, T+1)
    tokens = split.tokens[index].long()  # (B, T+1)
    return Batch(
        x=tokens[:, :-1],  # (B, T)
        y=tokens[:, 1:],  # (B, T)
        domain=split.domain[index[:, :-1]].long(),  # (B, T)
        char_class=split.char_class[index[:, :-1]].long(),  # (B, T)
    )


def sample_batch(
    split: Split, batch_size: int, seq_len: int, generator: torch.Generator | None = None
) -> Batch:
    """B windows of T tokens at uniformly random offsets, drawn from ``generator``.

    Passing the same ``torch.Generator`` state gives the same batch, which is what makes training
    runs (and resumed runs) reproducible.
    """
    _check_window(split, seq_len)
    starts = torch.randint(0, len(split) - seq_len, (batch_size,), generator=generator)  # (B,)
    return batch_at(split, starts, seq_len)


def eval_batches(split: Split, batch_size: int, seq_len: int, n_batches: int) -> Iterator[Batch]:
    """A fixed set of evenly spaced windows covering the split: the same every evaluation.

    Windows are spaced ``(L - T - 1) / (n_batches * B - 1)`` tokens apart, so with enough of them
    the whole split is read; they overlap when the split is shorter than the windows.
    """
    _check_window(split, seq_len)
    n_windows = n_batches * batch_size
    last_start = len(split) - seq_len - 1
    starts = torch.linspace(0, last_start, n_windows).round().long()  # (n_batches * B,)
    for chunk in starts.split(batch_size):
        yield batch_at(split, chunk, seq_len)
