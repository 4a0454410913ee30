"""Where a reply's streamed text is cut for the voice (``omni.lite.phrases``)."""

from __future__ import annotations

import pytest

from omni.lite.phrases import Ending, Piece, next_piece, speakable


def stream(text: str, first_words: int) -> list[Piece]:
    """Feed ``text`` a few characters at a time, as a model's tokens come, and cut as the
    reply does; the rest goes as the last piece when the text ends."""
    pieces: list[Piece] = []
    pending = ""
    tokens = [text[i : i + 3] for i in range(0, len(text), 3)]
    for token in tokens:
        pending += token
        while (piece := next_piece(pending, not pieces, first_words)) is not None:
            pieces.append(piece)
            pending = piece.rest
    if pending.strip():
        pieces.append(Piece(pending.strip(), "", Ending.SENTENCE))
    return pieces


def texts(pieces: list[Piece]) -> list[str]:
    return [p.text for p in pieces]


def test_the_opening_clause_goes_to_the_voice_at_once() -> None:
    opening = "The capital of France, as you know, is Paris"
    assert next_piece(opening, first=True) == Piece(
        "The capital of France,", "as you know, is Paris", Ending.CLAUSE
    )
    assert next_piece(opening) is None, "later sentences wait for their end"
    assert next_piece("Yes, it is", first=True) is None, "too short to say alone"
    assert next_piece("Paris. It is", first=True) == Piece("Paris.", "It is", Ending.SENTENCE)


def test_the_opening_words_go_after_first_words_whole_words() -> None:
    assert next_piece("The capital of France is", True, 4) == Piece(
        "The capital of France", "is", Ending.WORDS
    )
    assert next_piece("The capital of France", True, 4) is None, "France may go on"
    assert next_piece("The capital of France ", True, 4) is not None
    assert next_piece("The capital of France is", True, 0) is None, "0: whole sentences"
    assert next_piece("The capital of France is", False, 4) is None, "only the opening"


def test_the_opening_is_not_cut_after_a_word_that_cannot_end_a_phrase() -> None:
    assert next_piece("A spider has eight", True, 3) is None, "not after 'has'"
    assert next_piece("A spider has eight legs", True, 3) == Piece(
        "A spider has eight", "legs", Ending.WORDS
    )
    # At most WEAK_EXTRA words past first_words, whatever they are.
    assert next_piece("It is in the middle of the", True, 2) == Piece(
        "It is in the middle", "of the", Ending.WORDS
    )
    assert next_piece("It is one of the", True, 2) == Piece("It is one", "of the", Ending.WORDS)
    assert next_piece("It was one of the", True, 1) == Piece("It was one", "of the", Ending.WORDS)


def test_a_short_clause_among_the_opening_words_is_cut_at_its_comma() -> None:
    assert next_piece("I'm doing well, thank you", True, 4) == Piece(
        "I'm doing well,", "thank you", Ending.CLAUSE
    )
    assert next_piece("Yes, it is", True, 2) is None, "one word before a comma waits"
    assert next_piece("Yes, it is", True, 1) == Piece("Yes,", "it is", Ending.CLAUSE)


def test_a_full_stop_that_may_go_on_waits_for_the_next_token() -> None:
    assert next_piece("Pi is about 3.", True) is None
    assert next_piece("Pi is about 3.14. It", True) == Piece(
        "Pi is about 3.14.", "It", Ending.SENTENCE
    )
    assert next_piece("It has 8. Next", True) == Piece("It has 8.", "Next", Ending.SENTENCE)
    assert next_piece("It is in the U.", True) is None
    assert next_piece("Ask Dr. Smith. He", True) == Piece("Ask Dr. Smith.", "He", Ending.SENTENCE)
    assert next_piece("Paris.", True) == Piece("Paris.", "", Ending.SENTENCE)
    assert next_piece("Really?", False) == Piece("Really?", "", Ending.SENTENCE)


@pytest.mark.parametrize("first_words", [0, 1, 4, 8])
def test_streamed_pieces_keep_every_word_in_order(first_words: int) -> None:
    text = (
        "Well, the moon is about 384,400 km away, or 238,855 miles. It takes light 1.3 "
        "seconds to get here, which is quick! Isn't it? Ask Mr. Brown in the U.S. today."
    )
    pieces = stream(text, first_words)
    assert " ".join(texts(pieces)).split() == text.split()
    assert all(p.text == p.text.strip() and p.text for p in pieces)
    sentences = [p.text for p in pieces if p.ending is Ending.SENTENCE]
    assert sentences[-3:] == [
        "It takes light 1.3 seconds to get here, which is quick!",
        "Isn't it?",
        "Ask Mr. Brown in the U.S. today.",
    ]


def test_streamed_opening_is_cut_once_and_later_sentences_whole() -> None:
    pieces = stream("The capital of France is Paris. It is a big city.", 4)
    assert texts(pieces) == ["The capital of France", "is Paris.", "It is a big city."]
    assert [p.ending for p in pieces] == [Ending.WORDS, Ending.SENTENCE, Ending.SENTENCE]
    pieces = stream("The capital of France is Paris. It is a big city.", 0)
    assert texts(pieces) == ["The capital of France is Paris.", "It is a big city."]


def test_a_long_later_sentence_goes_at_its_last_clause() -> None:
    long = "Paris. " + ", ".join(["It has many old streets and squares"] * 3) + " and more"
    first, rest = next_piece(long, True), None
    assert first is not None and first.text == "Paris."
    rest = next_piece(first.rest)
    assert rest is not None and rest.ending is Ending.CLAUSE and rest.text.endswith(",")
    assert rest.rest == "It has many old streets and squares and more"


def test_markup_is_not_spoken() -> None:
    assert speakable("**Paris** is  the `capital`.") == "Paris is the capital ."
