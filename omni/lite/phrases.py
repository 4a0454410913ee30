"""Where a reply's streamed text is cut into pieces for the voice.

The voice makes a piece at a time and a whole sentence sounds best; but the person waits for
the first piece, so the reply's opening words go sooner: at their first clause end, or once
``first_words`` whole words are written, cut where a phrase can end (not after "the" or
"of").  Later sentences are made while earlier ones play, so they wait for their end (or a
clause end, when a sentence runs long).

The text arrives a token at a time, so a cut is only made where what follows cannot change
it: a word is whole once a space follows it, and a full stop at the very end of the text
waits for the next token when it may be a decimal point or an initial ("3." of "3.14", "U."
of "U.S."), and a full stop followed by a lower-case word or after a title ("Dr.") is not a
sentence end.
"""

from __future__ import annotations

import enum
import re
from typing import NamedTuple

_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_CLAUSE_END = re.compile(r"[,;:](?=\s)")
_WORD = re.compile(r"\S+")
_MARKUP = re.compile(r"[*_#`>\[\]]+")

LONG_CLAUSE = 90
"""A later sentence still unfinished at this many characters goes at its last clause end."""
FIRST_CLAUSE = 16
"""The opening words go at the first clause end after this many characters."""
WEAK_EXTRA = 3
"""How many words past ``first_words`` a cut may wait for a word that can end a phrase."""
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "vs", "jr", "sr", "prof"})
_WEAK_WORDS = """a an the of to in on at by for with from into onto about over under than as
and or but nor so if is are was were be been being am has have had do does did will would can
could shall should may might must not no very my your his her its our their this that these
those i i'm you he she it it's we they there here what which who whose when where how"""
_WEAK = frozenset(_WEAK_WORDS.split())
"""Words a phrase does not end on: the opening words are not cut right after them."""


class Ending(enum.Enum):
    SENTENCE = "sentence"
    CLAUSE = "clause"
    WORDS = "words"
    """Cut between words, inside a clause: the next piece follows without a pause."""


class Piece(NamedTuple):
    text: str
    rest: str
    ending: Ending


def next_piece(text: str, first: bool = False, first_words: int = 0) -> Piece | None:
    """The next piece for the voice once ``text`` (streamed so far) holds one, and the rest.

    ``first``: these are the reply's opening words; ``first_words`` > 0 lets them go after
    that many whole words even before a clause ends.
    """
    end = _sentence_end(text)
    if end is not None:
        return Piece(text[:end].strip(), text[end:].lstrip(), Ending.SENTENCE)
    if first:
        clause = _CLAUSE_END.search(text, FIRST_CLAUSE)
        if clause is not None:
            return Piece(text[: clause.end()].strip(), text[clause.end() :].lstrip(), Ending.CLAUSE)
        if first_words > 0:
            cut = _opening_cut(text, first_words)
            if cut is not None:
                return cut
    if len(text) > LONG_CLAUSE:
        clauses = list(_CLAUSE_END.finditer(text))
        if clauses:
            last = clauses[-1].end()
            return Piece(text[:last].strip(), text[last:].lstrip(), Ending.CLAUSE)
    return None


def _sentence_end(text: str) -> int | None:
    for match in _SENTENCE_END.finditer(text):
        before = text[: match.start()]
        if not before.strip():
            continue
        word = before.split()[-1].lower() if not before[-1:].isspace() else ""
        after = text[match.end() :].lstrip()[:1]
        if match.group() == "." and (
            word.strip("\"'(").rstrip(".") in _ABBREVIATIONS or after.islower()
        ):
            continue  # "Dr. Smith", "the U.S. today": a sentence starts with a capital
        if not after and match.group() == "." and _may_go_on(word):
            return None
        return match.end()
    return None


def _may_go_on(word: str) -> bool:
    """A full stop right after ``word``, with nothing after it yet, may not end the sentence:
    a decimal point, or an initial ("U.S.")."""
    bare = word.rstrip(".")
    return bare[-1:].isdigit() or "." in bare or (len(bare) == 1 and bare.isalpha())


def _opening_cut(text: str, first_words: int) -> Piece | None:
    words = list(_WORD.finditer(text))
    whole = words if text[-1:].isspace() else words[:-1]
    for count, word in enumerate(whole, start=1):
        token = word.group()
        clause = token[-1] in ",;:"
        if count < first_words and not (clause and count >= 2):
            continue
        bare = token.strip("\"'(),;:").lower()
        if clause or bare not in _WEAK or count >= first_words + WEAK_EXTRA:
            ending = Ending.CLAUSE if clause else Ending.WORDS
            return Piece(text[: word.end()].strip(), text[word.end() :].lstrip(), ending)
    return None


def speakable(text: str) -> str:
    """``text`` without markdown marks, its spaces collapsed."""
    return " ".join(_MARKUP.sub(" ", text).split())
