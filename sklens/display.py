"""Text as sklens shows it to people: whole characters per token, no invisible reordering.

A byte-level BPE token can hold part of a UTF-8 character (``ö`` is two bytes, an emoji four), so
decoding tokens one at a time turns each part into U+FFFD. ``token_texts`` decodes such tokens
together, as a streaming detokenizer does, and shows the whole character at the token that
completes it (the tokens before it show nothing), so every character of the text appears once.
``visible`` spells out the bidirectional controls (U+202E and its kin) that would otherwise
reorder the rest of a terminal line, and the control characters a terminal would act on (ESC
starts sequences that clear the screen or set the window title; BEL, BS, NUL, DEL).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"
MAX_CHAR_TOKENS = 4  # a UTF-8 character is at most 4 bytes, so at most 4 byte-level tokens
# bidi controls; C0 controls except tab, newline and carriage return (the table folds those into
# spaces); DEL and the C1 controls
_HIDDEN = re.compile(
    "[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"
)


def token_texts(decode: Callable[[list[int]], str], ids: Sequence[int]) -> list[str]:
    """One display string per token id: ``decode`` of the token, or of the group of tokens that
    ends at it when they split a character (empty strings for the group's earlier tokens)."""
    out: list[str] = []
    start = 0
    for i in range(len(ids)):
        text = decode(list(ids[start : i + 1]))
        if text.endswith(REPLACEMENT) and i + 1 - start < MAX_CHAR_TOKENS and i + 1 < len(ids):
            out.append("")  # a character is still incomplete: the next token may finish it
            continue
        out.append(text)
        start = i + 1
    return out


def visible(text: str) -> str:
    """``text`` with bidirectional and terminal control characters written as ``<U+202E>``."""
    return _HIDDEN.sub(lambda m: f"<U+{ord(m.group()):04X}>", text)
