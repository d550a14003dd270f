"""How a row's text becomes the token ids a model reads. The teacher tokenises cache rows so, and `predict`
tokenises new text so: an encoder's ids are the text truncated to `max_length`; a causal LM's are a prompt template
around the text, the text truncated so that the template's end (the answer cue) is always kept."""

from __future__ import annotations

TEXT = "{text}"


class PromptError(ValueError):
    """A prompt template or length that cannot frame a text; the message names the field."""


def split_template(template: str) -> tuple[str, str, str]:
    """(prefix, the whitespace that leads the text, suffix) of a prompt template holding {text} once.

    Whitespace at the end of the prefix is tokenised with the text ("Review: great" -> "Review", ":", " great"),
    as it would be in one piece, not as a lone space token.
    """
    if template.count(TEXT) != 1:
        raise PromptError(f"prompt: the template must contain {TEXT} exactly once, got {template!r}")
    prefix, suffix = template.split(TEXT)
    stripped = prefix.rstrip()
    return stripped, prefix[len(stripped):], suffix


def answer_separator(template: str) -> str:
    """What goes between the prompt and an answer (label word or response): a space unless the prompt ends in
    whitespace or is the text alone."""
    suffix = split_template(template)[2]
    return "" if not suffix or suffix[-1].isspace() else " "


def start_ids(tokenizer) -> list[int]:  # noqa: ANN001 - a transformers tokenizer
    """A BOS the tokenizer puts first, if any (a causal LM's sequences start with it)."""
    bos = tokenizer("", add_special_tokens=True)["input_ids"]
    return [i for i in bos if i == tokenizer.bos_token_id]


def plain_ids(tokenizer, texts: list[str]) -> list[list[int]]:  # noqa: ANN001
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def encode_plain(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:  # noqa: ANN001
    """An encoder's ids: the tokenizer's own special tokens, truncated to `max_length`."""
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"] if texts else []


def frame(tokenizer, start: list[int], template: str, room: int) -> tuple[list[int], str, list[int]]:  # noqa: ANN001
    """(ids before the text, the text's leading whitespace, ids after it) of a template, checked to leave the text
    at least one of `room` tokens."""
    prefix, lead, suffix = split_template(template)
    pre = start + (plain_ids(tokenizer, [prefix])[0] if prefix else [])
    suf = plain_ids(tokenizer, [suffix])[0] if suffix else []
    if room - len(pre) - len(suf) < 1:
        raise PromptError(f"max_length: the prompt template alone takes {len(pre) + len(suf)} tokens; "
                          f"only {room} are left for it and the text")
    return pre, lead, suf


def encode_prompts(tokenizer, start: list[int], template: str, texts: list[str],  # noqa: ANN001
                   max_length: int) -> list[list[int]]:
    """The template around each text; the text is truncated so that the template's end (the cue) is kept."""
    pre, lead, suf = frame(tokenizer, start, template, max_length)
    budget = max_length - len(pre) - len(suf)
    return [pre + ids[:budget] + suf for ids in plain_ids(tokenizer, [lead + t for t in texts])]
