"""Deterministic "did you mean ...?" suggestions.

Scores combine a character-level similarity ratio with a bonus for a shared prefix, so that a
truncated or extended word (``node`` / ``nodejs``) still finds its match. Ties are broken
alphabetically so the same typo always gets the same suggestion.
"""

from __future__ import annotations

from collections.abc import Iterable
from difflib import SequenceMatcher

# Below this score a candidate is more likely noise than the word the user meant.
_CUTOFF = 0.6
# Nobody mistypes a name this long; comparing one costs time in proportion to its length.
_MAX_WORD = 100


def _score(word: str, candidate: str) -> float:
    a, b = word.lower(), candidate.lower()
    if a == b:
        return 2.0
    prefix = min(len(a), len(b)) >= 3 and (a.startswith(b) or b.startswith(a))
    matcher = SequenceMatcher(None, a, b, autojunk=False)
    # The quick bounds are never below the ratio: a candidate under the cutoff by them is out anyway.
    if not prefix and (matcher.real_quick_ratio() < _CUTOFF or matcher.quick_ratio() < _CUTOFF):
        return 0.0
    ratio = matcher.ratio()
    return max(ratio, 0.75) if prefix else ratio


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate most similar to ``word``, or None when nothing is close enough."""
    if len(word) > _MAX_WORD:
        return None
    best: tuple[float, str] | None = None
    for candidate in sorted(set(candidates)):
        score = _score(word, candidate)
        if score >= _CUTOFF and (best is None or score > best[0]):
            best = (score, candidate)
    return best[1] if best else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` — did you mean 'x'?`` or an empty string."""
    match = closest(word, candidates)
    return f" — did you mean '{match}'?" if match else ""
