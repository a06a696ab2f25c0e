"""Text normalisation shared by deduplication and decontamination, so both agree on "the same prompt".

A text's words are its runs of letters, digits and underscores after Unicode NFKC normalisation and case
folding: ``"What's  2+2?"`` -> ``["what", "s", "2", "2"]``. Its normalised form is those words joined by
one space, so case, punctuation and spacing never make two prompts differ.
"""

from __future__ import annotations

import re
import unicodedata

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The words of ``text`` (see the module docstring)."""
    # NFKC and case folding leave ASCII text as lower() does: skip them for it (most text; 2x faster).
    folded = text.lower() if text.isascii() else unicodedata.normalize("NFKC", text).casefold()
    return _WORD.findall(folded)


def normalize(text: str) -> str:
    """``text`` reduced to its words joined by single spaces; equal for texts that differ only in case,
    punctuation or spacing."""
    return " ".join(words(text))
