"""A tiny library for `self_developing.py` to improve: it has a bug its tests catch."""


def word_count(text: str) -> int:
    """Return the number of words in *text* (words are separated by any whitespace)."""
    return len(text.split(" "))  # bug: "a  b" and "a\nb" are miscounted


def average_word_length(text: str) -> float:
    """Return the mean length of the words in *text* (0.0 when there are none)."""
    words = text.split()
    return sum(len(word) for word in words) / len(words) if words else 0.0
