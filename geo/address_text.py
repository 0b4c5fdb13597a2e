"""Address text for matching: folding case and diacritics, abbreviations, house numbers, queries.

A dispatcher types in a hurry, on whatever keyboard is at hand: "aleksanterink. 21",
"Toolonlahdenkatu 2", "Mannerheimintie 20b, Helsinki". Both the gazetteer's names and the
query go through the same `match_key`, so whatever one side writes the other is compared with
like for like: case, diacritics (ä = a, ö = o, å = a), punctuation and spacing vanish, and common
abbreviations (English "st", "rd", "ave"; Finnish "k." = katu, "t." = tie; Swedish "g." = gatan,
"v." = vägen) are spelled out.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Letters NFKD does not decompose into a base letter plus a mark.
_SPECIAL_LETTERS = str.maketrans({"ß": "ss", "æ": "ae", "ø": "o", "đ": "d", "ł": "l", "þ": "th"})

# Whole-word abbreviations. Applied to any word but the first, so "St. Urho's Pub" keeps its
# saint while "Main St" becomes "main street"; both sides of a comparison go through the same
# rule, so even a wrong expansion still matches itself.
_WORDS = {
    "st": "street",
    "rd": "road",
    "ave": "avenue",
    "av": "avenue",
    "blvd": "boulevard",
    "dr": "drive",
    "ln": "lane",
    "sq": "square",
    "hwy": "highway",
    "k": "katu",
    "t": "tie",
}

# Finnish and Swedish street names are compounds, abbreviated by cutting the last part to its
# initial and a dot: "Aleksanterink." = Aleksanterinkatu, "Mannerheimint." = Mannerheimintie,
# "Drottningg." = Drottninggatan, "Mannerheimv." = Mannerheimvägen (folded: "vagen").
_COMPOUND = re.compile(r"^(\w{3,}?)(k|t|g|v)\.$")
_COMPOUND_ENDINGS = {"k": "katu", "t": "tie", "g": "gatan", "v": "vagen"}

_NOT_ALNUM = re.compile(r"[^0-9a-z]+")


def fold(text: str) -> str:
    """Lower case, no diacritics, letters and digits only, words separated by single spaces."""
    text = text.casefold().translate(_SPECIAL_LETTERS)
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return _NOT_ALNUM.sub(" ", text).strip()


def _expand(word: str, first: bool) -> str:
    m = _COMPOUND.match(word)
    if m is not None:
        return m.group(1) + _COMPOUND_ENDINGS[m.group(2)]
    bare = word.rstrip(".")
    if not first and bare in _WORDS:
        return _WORDS[bare]
    return word


def match_key(text: str) -> str:
    """The form in which names and queries are compared: folded, expanded, without spaces.

    Spaces are dropped because Finnish writes one name both ways ("Alvar Aallon katu",
    "Alvar Aallonkatu"); a typo-tolerant comparison of the compact forms still sees every letter.
    """
    words = text.casefold().translate(_SPECIAL_LETTERS).split()
    expanded = " ".join(_expand(w, i == 0) for i, w in enumerate(words))
    return fold(expanded).replace(" ", "")


# "12", "12a", "12 A", "12-14", "12 A-C"; whatever follows (staircase, flat, floor: "4, 5. krs")
# is not part of the building's number. A letter directly followed by another letter is a word
# ("5th"), not a staircase, and then there is no house number.
_HOUSE_NUMBER = re.compile(r"(\d{1,6})(?:\s*([a-z])(?![a-z])|(?![0-9a-z]))(?:\s*-\s*(\d{1,6})(?![0-9]))?")


@dataclass(frozen=True, slots=True)
class HouseNumber:
    """A building's number: ``12``, ``12 A`` (letter ``a``), or a range ``12-14`` (last 14)."""

    number: int
    letter: str = ""
    last: int | None = None

    @property
    def key(self) -> str:
        """Canonical text: ``"12"``, ``"12a"``, ``"12-14"``."""
        rng = f"-{self.last}" if self.last is not None else ""
        return f"{self.number}{self.letter}{rng}"

    def match(self, wanted: HouseNumber) -> float:
        """How well this number (from the map) answers `wanted` (from a query): 0 to 1.

        1 for the same number; a little less for the right building with a staircase letter on
        one side only ("15" for "15 B", or the reverse) or a range holding the number
        ("31-33" for "33"); 0 otherwise.
        """
        if self.key == wanted.key:
            return 1.0
        if self.last is None and wanted.last is None and self.number == wanted.number:
            return 0.9 if not (self.letter and wanted.letter) else 0.0
        low, high = self.number, self.last if self.last is not None else self.number
        if wanted.last is None and low <= wanted.number <= high:
            return 0.95 if not wanted.letter else 0.85
        return 0.0


def _number_prefix(text: str) -> tuple[HouseNumber, str] | None:
    lowered = text.casefold().replace("\u2013", "-").strip()
    m = _HOUSE_NUMBER.match(lowered)
    if m is None:
        return None
    number = int(m.group(1))
    last = int(m.group(3)) if m.group(3) else None
    if last is not None and last <= number:
        last = None  # "12-1" is a flat number, not a range
    return HouseNumber(number=number, letter=m.group(2) or "", last=last), lowered[m.end() :]


def parse_house_number(text: str) -> HouseNumber | None:
    """The house number at the start of `text` (``"20 B"``, ``"36b"``, ``"31-33"``), or None."""
    found = _number_prefix(text)
    return found[0] if found is not None else None


@dataclass(frozen=True, slots=True)
class AddressQuery:
    """A free-text query split into its name part, house number and locality."""

    name: str  # the street or place name as typed
    key: str  # `match_key(name)`
    number: HouseNumber | None
    locality: tuple[str, ...]  # folded words after a comma (city, postcode), if any


def _split_number(tokens: list[str]) -> tuple[list[str], HouseNumber | None, list[str]]:
    # "Mannerheimintie 10 A 5" and "10 Mannerheimintie": the number is the first token that
    # starts with a digit after a name, or the first token if the rest is a name.
    for i, token in enumerate(tokens):
        if i > 0 and token[0].isdigit():
            found = _number_prefix(" ".join(tokens[i:]))
            if found is not None:
                return tokens[:i], found[0], fold(found[1]).split()
    if len(tokens) > 1 and tokens[0][0].isdigit():
        number = parse_house_number(tokens[0])
        if number is not None and not any(t[0].isdigit() for t in tokens[1:]):
            return tokens[1:], number, []
    return tokens, None, []


def parse_query(text: str) -> AddressQuery:
    """Split ``"Mannerheimintie 10 A, 00100 Helsinki"`` into name, number and locality words.

    Of several comma-separated parts, the address is the first that holds a name and a house
    number: parts before it name a building or shop ("Kaivopiha, Mannerheimintie 3"), parts
    after it the locality. Without one, the first part is the name.
    """
    parts = [p.split() for p in text.split(",")]
    chosen, split = 0, _split_number(parts[0])
    for i, tokens in enumerate(parts[1:], start=1):
        if split[1] is not None:
            break
        candidate = _split_number(tokens)
        # Only "name number" counts here: a leading number after a comma is a postcode.
        if candidate[1] is not None and tokens and not tokens[0][0].isdigit():
            chosen, split = i, candidate
    name_tokens, number, rest = split
    # Words after the number ("Mannerheimintie 10 Helsinki") name the locality; a bare number
    # there is a flat, unless it has a postcode's length.
    extra = tuple(w for w in rest if (not w.isdigit() or len(w) == 5) and len(w) > 1)
    tail = " ".join(" ".join(tokens) for tokens in parts[chosen + 1 :])
    name = " ".join(name_tokens)
    return AddressQuery(name=name, key=match_key(name), number=number, locality=tuple(fold(tail).split()) + extra)
