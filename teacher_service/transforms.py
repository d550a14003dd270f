"""The built-in perturbation transforms: pure functions of (text, rng, severity, ctx), registered by `perturb`.

Families: character (`keyboard_typo`, `char_noise`), word (`word_dropout`, `word_shuffle`), surface (`casing`,
`punctuation`), lexical (`embedding_neighbour`) and domain (`domain_swap`, `numeric_jitter`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

MAX_SEVERITY = 5


@dataclass(frozen=True)
class PerturbContext:
    """Optional resources some transforms need."""

    neighbours: Mapping[str, Sequence[str]] | None = None
    domain_vocab: Mapping[str, str] | None = None


TransformFn = Callable[[str, random.Random, int, PerturbContext], str]


@dataclass(frozen=True)
class Builtin:
    name: str
    family: str
    help: str
    needs: tuple[str, ...]
    fn: TransformFn


BUILTIN: list[Builtin] = []


def builtin(name: str, *, family: str, help: str, needs: tuple[str, ...] = ()) -> Callable[[TransformFn], TransformFn]:
    """Collect a transform into BUILTIN (`perturb.register` puts each into the registry)."""

    def deco(fn: TransformFn) -> TransformFn:
        BUILTIN.append(Builtin(name, family, help, tuple(needs), fn))
        return fn

    return deco


# ---------------------------------------------------------------------------------------------------------
# helpers

_TOKEN_RE = re.compile(r"(\S+)")
_AFFIX_RE = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)


def _n_edits(rate: float, n: int) -> int:
    """Number of edits for ``n`` units; at least one so severity >= 2 always changes something."""
    if n <= 0:
        return 0
    return min(n, max(1, round(rate * n)))


def _split(text: str) -> tuple[list[str], list[str]]:
    """Split into words and the whitespace around them: text == seps[0] + w0 + seps[1] + ... + seps[-1]."""
    parts = _TOKEN_RE.split(text)
    return parts[1::2], parts[0::2]


def _join(words: list[str], seps: list[str]) -> str:
    out = [seps[0]]
    for w, s in zip(words, seps[1:], strict=True):
        out.append(w)
        out.append(s)
    return "".join(out)


def _affixes(word: str) -> tuple[str, str, str]:
    """Split a token into (leading punctuation, core, trailing punctuation)."""
    m = _AFFIX_RE.match(word)
    assert m is not None  # the pattern matches any string
    return m.group(1), m.group(2), m.group(3)


def _match_case(template: str, word: str) -> str:
    """Give ``word`` the capitalisation style of ``template`` (ALL CAPS or leading capital)."""
    if not word or not template:
        return word
    if len(template) > 1 and template.isupper():
        return word.upper()
    if template[0].isupper():
        return word[0].upper() + word[1:]
    return word


# ---------------------------------------------------------------------------------------------------------
# character family

_QWERTY_NEIGHBOURS: dict[str, str] = {
    "q": "wa", "w": "qeasd", "e": "wrsdf", "r": "etdfg", "t": "ryfgh", "y": "tughj", "u": "yihjk",
    "i": "uojkl", "o": "ipkl", "p": "ol", "a": "qwszx", "s": "qweadzxc", "d": "wersfxcv",
    "f": "ertdgcvb", "g": "rtyfhvbn", "h": "tyugjbnm", "j": "yuihknm", "k": "uiojlm", "l": "iopk",
    "z": "asx", "x": "zcasd", "c": "xvsdf", "v": "cbdfg", "b": "vnfgh", "n": "bmghj", "m": "nhjk",
}  # fmt: skip
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@builtin("keyboard_typo", family="character", help="replace letters with QWERTY-neighbour keys")
def keyboard_typo(text: str, rng: random.Random, severity: int, ctx: PerturbContext) -> str:
    """Replace ~3%*severity of the letters by an adjacent key, preserving case."""
    positions = [i for i, ch in enumerate(text) if ch.lower() in _QWERTY_NEIGHBOURS]
    chosen = rng.sample(positions, _n_edits(0.03 * severity, len(positions)))
    chars = list(text)
    for i in sorted(chosen):
        ch = chars[i]
        new = rng.choice(_QWERTY_NEIGHBOURS[ch.lower()])
        chars[i] = new.upper() if ch.isupper() else new
    return "".join(chars)


@builtin("char_noise", family="character", help="random character insert / delete / adjacent swap")
def char_noise(text: str, rng: random.Random, severity: int, ctx: PerturbContext) -> str:
    """Insert, delete or swap ~3%*severity of the non-space characters."""
    positions = [i for i, ch in enumerate(text) if not ch.isspace()]
    if not positions:
        return text
    chosen = set(rng.sample(positions, _n_edits(0.03 * severity, len(positions))))
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if i not in chosen:
            out.append(ch)
            i += 1
            continue
        op = rng.choice(("insert", "delete", "swap"))
        nxt = text[i + 1] if i + 1 < len(text) else ""
        # A swap of equal or whitespace neighbours would be a no-op or move a word boundary; insert instead.
        if op == "swap" and (not nxt or nxt.isspace() or nxt == ch):
            op = "insert"
        if op == "insert":
            out.append(rng.choice(_LETTERS))
            out.append(ch)
            i += 1
        elif op == "delete":
            i += 1
        else:
            out.append(nxt)
            out.append(ch)
            i += 2
    result = "".join(out)
    if result == text:
        # Edits can cancel out (delete 'a' then insert 'a'); an insertion always changes the length.
        i = rng.choice(positions)
        result = text[:i] + rng.choice(_LETTERS) + text[i:]
    return result


# ---------------------------------------------------------------------------------------------------------
# word family


@builtin("word_dropout", family="word", help="drop ~10%*severity of the words (never all of them)")
def word_dropout(text: str, rng: random.Random, severity: int, ctx: PerturbContext) -> str:
    """Drop words; trailing punctuation of a dropped word moves to the previous kept word."""
    words, seps = _split(text)
    n = len(words)
    if n < 2:
        return text
    drop = set(rng.sample(range(n), min(n - 1, _n_edits(0.1 * severity, n))))
    kept: list[str] = []
    kept_seps: list[str] = [seps[0]]
    for i, w in enumerate(words):
        if i not in drop:
            kept.append(w)
            kept_seps.append(seps[i + 1])
            continue
        _, _, trail = _affixes(w)
        # Keep sentence-final punctuation so "... was great." does not lose its period.
        if trail and kept and not _affixes(kept[-1])[2]:
            kept[-1] += trail
    kept_seps[-1] = seps[-1]
    return _join(kept, kept_seps)


@builtin("word_shuffle", family="word", help="shuffle words within local windows of severity+1 words")
def word_shuffle(text: str, rng: random.Random, severity: int, ctx: PerturbContext) -> str:
    """Shuffle word cores inside windows, leaving punctuation in place; output always differs if possible."""
    words, seps = _split(text)
    parts = [_affixes(w) for w in words]
    cores = [p[1] for p in parts]
    if len({c for c in cores if c}) < 2:
        return text
    idx = [i for i, c in enumerate(cores) if c]  # tokens that are pure punctuation stay put
    window = severity + 1
    offset = rng.randrange(window)
    order = list(idx)
    starts = sorted({0, *range(offset, len(idx), window)})
    for a, b in zip(starts, [*starts[1:], len(idx)], strict=True):
        chunk = order[a:b]
        rng.shuffle(chunk)
        order[a:b] = chunk
    new_cores = list(cores)
    for dst, src in zip(idx, order, strict=True):
        new_cores[dst] = cores[src]
    if new_cores == cores:
        pairs = [(idx[j], idx[j + 1]) for j in range(len(idx) - 1) if cores[idx[j]] != cores[idx[j + 1]]]
        a, b = rng.choice(pairs)
        new_cores[a], new_cores[b] = new_cores[b], new_cores[a]
    out = [lead + core + trail for (lead, _, trail), core in zip(parts, new_cores, strict=True)]
    return _join(out, seps)


# ---------------------------------------------------------------------------------------------------------
# surface family


def _random_case(word: str, rng: random.Random) -> str:
    return "".join(ch.upper() if rng.random() < 0.5 else ch.lower() for ch in word)


@builtin(
    "casing", family="surface", help="random UPPER / lower / Title / rAnDoM casing of ~10%*severity words"
)
def casing(text: str, rng: random.Random, severity: int, ctx: PerturbContext) -> str:
    """Recase a fraction of the words; every chosen word is guaranteed to change."""
    words, seps = _split(text)
    cand = [i for i, w in enumerate(words) if w.upper() != w.lower()]
    for i in sorted(rng.sample(cand, _n_edits(0.1 * severity, len(cand)))):
        w = words[i]
        options = [w.upper(), w.lower(), w.title(), _random_case(w, rng)]
        options = [o for o in dict.fromkeys(options) if o != w]
        # A single cased letter has only one alternative, swapcase; dict.fromkeys keeps order deterministic.
        words[i] = rng.choice(options) if options else w.swapcase()
    return _join(words, seps)


_INSERT_PUNCT = (",", "!", "!!", "...", "?", ";", ":", " -")


@builtin(
    "punctuation", family="surface", help="insert / remove / duplicate punctuation after ~8%*severity words"
)
def punctuation(text: str, rng: random.Random, severity: int, ctx: PerturbContext) -> str:
    """Edit trailing punctuation of distinct words, so every edit survives."""
    words, seps = _split(text)
    if not words:
        return text
    for i in sorted(rng.sample(range(len(words)), _n_edits(0.08 * severity, len(words)))):
        lead, core, trail = _affixes(words[i])
        if not core:
            words[i] = words[i] + words[i][-1]  # pure punctuation token: duplicate, never erase it
        elif trail and rng.random() < 0.5:
            words[i] = lead + core  # drop commas/periods/...
        elif trail:
            words[i] = lead + core + trail + trail[-1] * rng.randint(1, 2)
        else:
            words[i] = lead + core + rng.choice(_INSERT_PUNCT)
    return _join(words, seps)


# ---------------------------------------------------------------------------------------------------------
# lexical family


@builtin(
    "embedding_neighbour",
    family="lexical",
    needs=("neighbours",),
    help="replace ~10%*severity words by a nearest neighbour in token-embedding space",
)
def embedding_neighbour(text: str, rng: random.Random, severity: int, ctx: PerturbContext) -> str:
    """Swap words that have embedding neighbours for a random top-k neighbour, keeping capitalisation."""
    neigh = ctx.neighbours or {}
    words, seps = _split(text)
    cand: list[tuple[int, list[str]]] = []
    for i, w in enumerate(words):
        core = _affixes(w)[1]
        options = [n for n in neigh.get(core.lower(), ()) if n and n.lower() != core.lower()]
        if options:
            cand.append((i, options))
    k = min(len(cand), _n_edits(0.1 * severity, len(words)))
    for i, options in sorted(rng.sample(cand, k)):
        lead, core, trail = _affixes(words[i])
        words[i] = lead + _match_case(core, rng.choice(options)) + trail
    return _join(words, seps)


# ---------------------------------------------------------------------------------------------------------
# domain family


def _pluralise(word: str) -> str:
    if re.search(r"(s|x|z|ch|sh)$", word, re.IGNORECASE):
        return word + "es"
    return word + "s"


@builtin(
    "domain_swap",
    family="domain",
    needs=("domain_vocab",),
    help="swap task words for domain words (severity/5 of the matches; 5 = all)",
)
def domain_swap(text: str, rng: random.Random, severity: int, ctx: PerturbContext) -> str:
    """Replace whole-word (optionally plural) matches of ctx.domain_vocab keys, case-insensitively."""
    vocab = {k.lower(): v for k, v in (ctx.domain_vocab or {}).items() if k and v and k.lower() != v.lower()}
    if not vocab:
        return text
    # Longest keys first so multi-word keys win over their prefixes.
    keys = sorted(vocab, key=lambda k: (-len(k), k))
    pattern = re.compile(r"(?<!\w)(" + "|".join(re.escape(k) for k in keys) + r")(e?s)?(?!\w)", re.IGNORECASE)
    matches = list(pattern.finditer(text))
    if not matches:
        return text
    chosen = set(rng.sample(range(len(matches)), _n_edits(severity / MAX_SEVERITY, len(matches))))
    out: list[str] = []
    pos = 0
    for j, m in enumerate(matches):
        if j not in chosen:
            continue
        repl = vocab[m.group(1).lower()]
        if m.group(2):
            repl = _pluralise(repl)
        out.append(text[pos : m.start()])
        out.append(_match_case(m.group(0), repl))
        pos = m.end()
    out.append(text[pos:])
    return "".join(out)


_NUMBER_RE = re.compile(r"(?<![\w.,])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w]|[.,]\d)")


def _format_number(value: float, template: str) -> str:
    """Format ``value`` like ``template``: same decimals, thousands separators if it had them."""
    decimals = len(template.split(".")[1]) if "." in template else 0
    sep = "," if "," in template else ""
    s = f"{value:{sep}.{decimals}f}"
    if s.startswith("-") and float(s.replace(",", "")) == 0:
        s = s[1:]  # avoid '-0' / '-0.00'
    return s


@builtin(
    "numeric_jitter",
    family="domain",
    help="multiply every number by 1+u, u~U(-0.1*severity, 0.1*severity), keeping int/decimal format",
)
def numeric_jitter(text: str, rng: random.Random, severity: int, ctx: PerturbContext) -> str:
    """Jitter numbers; at least one number is guaranteed to change."""
    matches = list(_NUMBER_RE.finditer(text))
    if not matches:
        return text
    spread = 0.1 * severity
    news: list[str] = []
    for m in matches:
        s = m.group(0)
        value = float(s.replace(",", "")) * (1.0 + rng.uniform(-spread, spread))
        news.append(_format_number(value, s))
    if all(n == m.group(0) for n, m in zip(news, matches, strict=True)):
        # Small integers (and rounding) can absorb the jitter; nudge one number by one unit in the last place.
        j = rng.randrange(len(matches))
        s = matches[j].group(0)
        step = 10.0 ** -(len(s.split(".")[1]) if "." in s else 0)
        direction = rng.choice((-1, 1))
        for d in (direction, -direction):
            news[j] = _format_number(float(s.replace(",", "")) + d * step, s)
            if news[j] != s:
                break
    out: list[str] = []
    pos = 0
    for m, new in zip(matches, news, strict=True):
        out.append(text[pos : m.start()])
        out.append(new)
        pos = m.end()
    out.append(text[pos:])
    return "".join(out)
