"""Tests for moe_lab.data: determinism, labels aligned with tokens, disjoint splits, loader errors."""

from __future__ import annotations

import re

import pytest
import torch

from moe_lab.data import (
    CHAR_CLASSES,
    DIGIT,
    DOMAINS,
    LETTER,
    NEWLINE,
    PUNCTUATION,
    WHITESPACE,
    ByteTokenizer,
    batch_at,
    char_class,
    eval_batches,
    load_text_file,
    make_corpus,
    sample_batch,
)


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(n_chars=30_000, seed=3)


def test_same_seed_same_corpus_byte_for_byte(corpus):
    again = make_corpus(n_chars=30_000, seed=3)
    for name in ("train", "val"):
        a, b = getattr(corpus, name), getattr(again, name)
        for field in ("tokens", "domain", "char_class", "doc_index"):
            assert torch.equal(getattr(a, field), getattr(b, field))
        assert a.documents == b.documents


def test_different_seed_different_corpus(corpus):
    other = make_corpus(n_chars=30_000, seed=4)
    assert other.train.text != corpus.train.text


def test_size_and_every_domain_in_both_splits(corpus):
    assert len(corpus.train) + len(corpus.val) >= 30_000
    for split in (corpus.train, corpus.val):
        assert set(split.domain.unique().tolist()) == set(range(len(DOMAINS)))


def test_splits_never_share_a_document(corpus):
    train_texts = {doc.text for doc in corpus.train.documents}
    val_texts = {doc.text for doc in corpus.val.documents}
    assert not train_texts & val_texts
    # About val_fraction = 10% of the documents are held out (some may be dropped as repeats).
    n_docs = len(corpus.train.documents) + len(corpus.val.documents)
    assert 0.05 < len(corpus.val.documents) / n_docs < 0.15


def test_labels_aligned_with_tokens(corpus):
    split = corpus.train
    text = split.text
    assert split.tokens.tolist() == list(text.encode("ascii"))  # ASCII: one byte per character
    assert split.char_class.tolist() == [char_class(c) for c in text]
    # Each token's domain is its document's domain, and documents are concatenated in order.
    doc_domains = torch.tensor([doc.domain for doc in split.documents])
    assert torch.equal(split.domain.long(), doc_domains[split.doc_index.long()])
    lengths = torch.bincount(split.doc_index.long(), minlength=len(split.documents))
    assert lengths.tolist() == [len(doc.text) for doc in split.documents]


def test_char_classes_by_hand():
    expected = {
        "a": LETTER,
        "Z": LETTER,
        "7": DIGIT,
        " ": WHITESPACE,
        "\t": WHITESPACE,
        "\n": NEWLINE,
        "=": PUNCTUATION,
        ";": PUNCTUATION,
        "é": LETTER,
    }
    assert {c: char_class(c) for c in expected} == expected
    assert len(CHAR_CLASSES) == 5


def test_domains_carry_their_planted_structure(corpus):
    docs = {
        name: [d.text for d in corpus.train.documents if d.domain == i]
        for i, name in enumerate(corpus.domain_names)
    }
    for text in docs["arithmetic"]:
        for line in text.splitlines():
            a, op, b, answer = re.fullmatch(r"(\d+)([+*-])(\d+)=(-?\d+)", line).groups()
            assert eval(f"{a}{op}{b}") == int(answer)  # the answers are correct
    for text in docs["code"]:
        assert text.startswith("def ") and "    return " in text
    for text in docs["english"]:
        assert text[0].isupper() and text.rstrip().endswith(".")
    for text in docs["records"]:
        for line in text.splitlines():
            assert re.fullmatch(
                r"id=\d{4}; name=\w+ \w+; born=\d{4}-\d\d-\d\d; city=\w+;"
                r" score=\d+\.\d",
                line,
            )

    # The domains have different statistics: digits dominate arithmetic, letters English.
    def digit_share(texts):
        joined = "".join(texts)
        return sum(c.isdigit() for c in joined) / len(joined)

    assert digit_share(docs["arithmetic"]) > 0.6 > 0.05 > digit_share(docs["english"])


def test_records_repeat_a_fixed_roster(corpus):
    # Each id always comes with the same name, birth date and city, in train and validation:
    # facts to memorize (make_corpus's n_people=64 roster), with only the score varying.
    records = corpus.domain_names.index("records")
    facts: dict[str, str] = {}
    for split in (corpus.train, corpus.val):
        for doc in split.documents:
            if doc.domain == records:
                for line in doc.text.splitlines():
                    person, _score = line.rsplit(" score=", 1)
                    person_id = person.split(";")[0]
                    assert facts.setdefault(person_id, person) == person
    assert 10 < len(facts) <= 64


def test_batches_shift_targets_and_keep_labels_aligned(corpus):
    split = corpus.train
    batch = sample_batch(split, 4, 16, torch.Generator().manual_seed(0))
    assert batch.x.shape == batch.y.shape == batch.domain.shape == batch.char_class.shape == (4, 16)
    assert torch.equal(batch.x[:, 1:], batch.y[:, :-1])
    # Recover the window starts from the same generator state and read the labels directly.
    starts = torch.randint(0, len(split) - 16, (4,), generator=torch.Generator().manual_seed(0))
    for row, start in enumerate(starts.tolist()):
        assert batch.x[row].tolist() == split.tokens[start : start + 16].tolist()
        assert batch.domain[row].tolist() == split.domain[start : start + 16].tolist()
        assert batch.char_class[row].tolist() == [char_class(chr(t)) for t in batch.x[row]]


def test_same_generator_state_same_batch(corpus):
    a = sample_batch(corpus.train, 8, 32, torch.Generator().manual_seed(5))
    b = sample_batch(corpus.train, 8, 32, torch.Generator().manual_seed(5))
    assert torch.equal(a.x, b.x) and torch.equal(a.domain, b.domain)


def test_batches_mix_domains(corpus):
    batch = sample_batch(corpus.train, 32, 64, torch.Generator().manual_seed(0))
    assert len(batch.domain.unique()) == len(DOMAINS)


def test_eval_batches_are_fixed_and_span_the_split(corpus):
    first = list(eval_batches(corpus.val, 4, 32, 3))
    second = list(eval_batches(corpus.val, 4, 32, 3))
    assert len(first) == 3
    assert all(torch.equal(a.x, b.x) for a, b in zip(first, second, strict=True))
    assert first[0].x[0].tolist() == corpus.val.tokens[:32].tolist()  # starts at the beginning
    assert first[-1].y[-1, -1] == corpus.val.tokens[-1]  # ends at the last token


def test_too_short_split_is_a_clear_error(corpus):
    with pytest.raises(ValueError, match="fewer than seq_len"):
        sample_batch(corpus.val, 2, len(corpus.val))


def test_tokenizer_round_trip():
    tokenizer = ByteTokenizer()
    text = "12+7=19\nnaïve café ✓"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert max(tokenizer.encode(text)) < tokenizer.vocab_size == 256
    assert tokenizer.decode([0xE2]) == "\ufffd"  # a cut multi-byte character does not crash


def test_batch_at_reads_the_given_windows(corpus):
    batch = batch_at(corpus.train, torch.tensor([0, 10]), 5)
    assert batch.x[1].tolist() == corpus.train.tokens[10:15].tolist()
    assert batch.y[1].tolist() == corpus.train.tokens[11:16].tolist()


def test_load_text_file(tmp_path):
    path = tmp_path / "poem.txt"
    lines = [f"line {i}: the café is open é\n" for i in range(200)]
    path.write_text("".join(lines), encoding="utf-8")
    corpus = load_text_file(path)
    assert corpus.domain_names == ("text",)
    assert corpus.train.text + corpus.val.text != ""
    texts = {d.text for d in corpus.train.documents} | {d.text for d in corpus.val.documents}
    assert "".join(sorted(texts)) and not {d.text for d in corpus.train.documents} & {
        d.text for d in corpus.val.documents
    }
    # A two-byte character gives both of its tokens the character's labels.
    split = corpus.train
    e_acute = list("é".encode())
    tokens = split.tokens.tolist()
    i = next(i for i in range(len(tokens) - 1) if tokens[i : i + 2] == e_acute)
    assert split.char_class[i] == split.char_class[i + 1] == LETTER
    assert (split.domain == 0).all()


@pytest.mark.parametrize(
    ("content", "error", "match"),
    [
        (None, FileNotFoundError, "no such file"),
        (b"", ValueError, "empty"),
        (b"  \n\n ", ValueError, "empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", ValueError, "not a text file"),
        (b"caf\xe9 au lait", ValueError, "not UTF-8"),
    ],
)
def test_load_text_file_errors(tmp_path, content, error, match):
    path = tmp_path / "input.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match=match):
        load_text_file(path)


def test_load_text_file_rejects_a_folder(tmp_path):
    with pytest.raises(IsADirectoryError, match="folder"):
        load_text_file(tmp_path)


def test_make_corpus_validates_its_arguments():
    with pytest.raises(ValueError, match="unknown domains"):
        make_corpus(1000, domains=("poetry",))
    with pytest.raises(ValueError, match="val_fraction"):
        make_corpus(1000, val_fraction=1.0)
