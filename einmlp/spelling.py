"""How names are spelled: Unicode letters, hats, layer digits and subscripts, read into ASCII.

The tokenizer calls `read_name` wherever a name starts. It returns the name einmlp uses
(`Ŷ` is `Yhat`, `Δ` is `Delta`, `f₂` is `f2`, `W⁽¹⁾` and `W¹` before indices are `W1`) and
the indices written as a subscript (`X_ij` is X[i,j], `X_{mu,nu}` is X[mu,nu], `W_1` is the
name W1). Nothing here guesses: a spelling with two plausible readings is refused with
both readings in the message.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

GREEK = {
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lamda",
    "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega",
}
_ACCENTS = {"\u0302": "hat", "\u0303": "tilde", "\u0304": "bar", "\u0305": "bar"}
_SUBSCRIPT_DIGITS = {chr(0x2080 + d): str(d) for d in range(10)}
_SUPERSCRIPT_DIGITS = {"\u00b9": "1", "\u00b2": "2", "\u00b3": "3",
                       **{chr(0x2070 + d): str(d) for d in (0, 4, 5, 6, 7, 8, 9)}}
SUPERSCRIPTS = set(_SUPERSCRIPT_DIGITS)
MAX_SUBSCRIPT = 3  # characters of an index run: X_ijk is three indices, a longer run looks like a word


class SpellingError(Exception):
    """A name spelled in a way einmlp refuses; `offset` is where in the text."""

    def __init__(self, message: str, offset: int):
        super().__init__(message)
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Name:
    text: str                      # the ASCII name: Yhat, W1, mu
    indices: tuple | None          # from a subscript (names and ints), or None
    end: int                       # offset just after the name and its subscript
    index_offsets: tuple = ()      # where each subscript index starts, for error carets


def letter(ch: str) -> str | None:
    """One letter as ASCII: itself, a Greek name (`μ` is mu, `Δ` is Delta), or None."""
    if "a" <= ch <= "z" or "A" <= ch <= "Z":
        return ch
    if ch == "\u00b5":  # the micro sign, typed for mu
        return "mu"
    if ch == "\u2211":  # the summation sign: Sigma, read as sum before a subscript
        return "Sigma"
    parts = unicodedata.name(ch, "").split()
    if len(parts) == 4 and parts[:2] == ["GREEK", "SMALL"] and parts[2] == "LETTER" and parts[3].lower() in GREEK:
        return "lambda" if parts[3] == "LAMDA" else parts[3].lower()
    if len(parts) == 4 and parts[:3] == ["GREEK", "CAPITAL", "LETTER"] and parts[3].lower() in GREEK:
        return "Lambda" if parts[3] == "LAMDA" else parts[3].capitalize()
    return None


def starts_name(text: str, pos: int) -> bool:
    """Whether a name starts at `pos`: a letter, Greek or Latin, plain or accented."""
    ch = text[pos]
    return letter(ch) is not None or _accented(ch) is not None


def _accented(ch: str) -> str | None:
    """A precomposed letter with a hat, tilde or bar (`Ŷ`, `ỹ`, `x̄`) as `Yhat`, `ytilde`, `xbar`."""
    decomposed = unicodedata.normalize("NFD", ch)
    if len(decomposed) == 2 and decomposed[1] in _ACCENTS and letter(decomposed[0]):
        return letter(decomposed[0]) + _ACCENTS[decomposed[1]]
    return None


def _base(text: str, pos: int) -> tuple[str, int]:
    """The name's letters and digits, up to a subscript, superscript or anything else."""
    out = []
    while pos < len(text):
        ch = text[pos]
        if ch in _ACCENTS and out and out[-1].isalpha():  # a combining hat after its letter
            out.append(_ACCENTS[ch])
        elif "0" <= ch <= "9":
            out.append(ch)
        elif ch in _SUBSCRIPT_DIGITS:
            out.append(_SUBSCRIPT_DIGITS[ch])
        elif letter(ch) or _accented(ch):
            out.append(letter(ch) or _accented(ch))
        else:
            break
        pos += 1
    return "".join(out), pos


def _superscript(text: str, pos: int) -> tuple[str, int, bool]:
    """Layer digits written above: `⁽¹⁾` (always the name's) or bare `¹²` (third value True)."""
    if text.startswith("\u207d", pos):
        end = pos + 1
        while end < len(text) and text[end] in _SUPERSCRIPT_DIGITS:
            end += 1
        if end > pos + 1 and text.startswith("\u207e", end):
            return "".join(_SUPERSCRIPT_DIGITS[c] for c in text[pos + 1:end]), end + 1, False
        raise SpellingError("a layer number written as a superscript is closed by '⁾', as in W⁽¹⁾", pos)
    end = pos
    while end < len(text) and text[end] in _SUPERSCRIPT_DIGITS:
        end += 1
    return "".join(_SUPERSCRIPT_DIGITS[c] for c in text[pos:end]), end, True


def _braced(text: str, pos: int, name: str) -> tuple[tuple, int, tuple]:
    """`_{mu,nu}` or `_{mu nu}`: index names separated by commas or spaces."""
    close = text.find("}", pos)
    newline = text.find("\n", pos)
    if close < 0 or 0 <= newline < close:
        raise SpellingError(f"subscript of {name} opened with '{{' is not closed", pos)
    inner = text[pos + 1:close]
    items, offsets, start = [], [], pos + 1
    for raw in inner.replace(",", " ").split(" "):
        if raw:
            offsets.append(text.find(raw, start))
            start = offsets[-1] + len(raw)
            items.append(raw)
    if not items:
        raise SpellingError(f"empty subscript on {name}", pos)
    indices = []
    for raw, offset in zip(items, offsets):
        word, end = _base(raw, 0)
        if end != len(raw) or not word:
            raise SpellingError(f"{raw!r} in the subscript of {name} is not an index name", offset)
        indices.append(int(word) if word.isdigit() else word)
    if len(items) == 1 and isinstance(indices[0], str) and len(raw) > 1 and indices[0] not in GREEK \
            and indices[0].lower() not in GREEK:
        word = indices[0]
        raise SpellingError(
            f"{name}_{{{word}}} is ambiguous: indices {', '.join(word)} (write {name}_{word} or "
            f"{name}_{{{','.join(word)}}}) or one index named {word} (write {name}[{word}])", pos)
    return tuple(indices), close + 1, tuple(offsets)


def _run(text: str, pos: int) -> tuple[list[tuple[str, int]], int]:
    """A plain subscript run after `_`: each letter (or digit) with its offset."""
    chars = []
    while pos < len(text):
        ch = text[pos]
        if "0" <= ch <= "9":
            chars.append((ch, pos))
        elif letter(ch):
            chars.append((letter(ch), pos))
        else:
            break
        pos += 1
    return chars, pos


def read_name(text: str, pos: int) -> Name:
    """Read the name starting at `pos` (see the module docstring for the spellings)."""
    name, pos = _base(text, pos)
    while True:
        digits, end, bare = _superscript(text, pos)
        if digits:
            follows_index = end < len(text) and text[end] in "_["
            if bare and not follows_index:
                break  # x² is a power: the tokenizer reads it after the name
            name, pos = name + digits, end
            continue
        if pos < len(text) and text[pos] == "_":
            if pos + 1 < len(text) and text[pos + 1] == "{":
                indices, end, offsets = _braced(text, pos + 1, name)
                if all(isinstance(i, int) for i in indices) and len(indices) == 1:
                    name, pos = name + str(indices[0]), end  # W_{1} is W1, like W_1
                    continue
                return _finish(text, name, indices, end, offsets)
            chars, end = _run(text, pos + 1)
            if not chars:
                raise SpellingError(f"'_' after {name} starts a subscript (X_ij, W_1, X_{{mu,nu}}); "
                                    "nothing follows it", pos)
            if all(c.isdigit() for c, _ in chars):
                name, pos = name + "".join(c for c, _ in chars), end  # W_1 is W1: a layer number
                continue
            if len(chars) > MAX_SUBSCRIPT:
                word = text[pos + 1:end]
                raise SpellingError(
                    f"{name}_{word}: '_' starts a subscript, so this would be {len(chars)} indices "
                    f"{name}[{','.join(c for c, _ in chars)}]; for one name write {name}{word} "
                    f"(underscores start subscripts), for indices write {name}[...]", pos)
            indices = tuple(int(c) if c.isdigit() else c for c, _ in chars)
            return _finish(text, name, indices, end, tuple(o for _, o in chars))
        break
    return Name(name, None, pos)


def _finish(text: str, name: str, indices: tuple, end: int, offsets: tuple) -> Name:
    if end < len(text) and text[end] in "_[":
        written = text[offsets[0] - 1 if offsets else end:end]
        raise SpellingError(f"{name} has indices twice: the subscript {written} and "
                            f"{'another subscript' if text[end] == '_' else 'brackets'}; "
                            f"write them once, as {name}[{', '.join(map(str, indices))}, ...]", end)
    return Name(name, indices, end, offsets)


def superscript_power(text: str, pos: int) -> tuple[str, int]:
    """Bare superscript digits (`²` after `)` or a name): the exponent and where it ends."""
    digits, end, _ = _superscript(text, pos)
    return digits, end
