import unittest

from textstats import average_word_length, word_count


class TextStatsTest(unittest.TestCase):
    def test_word_count(self) -> None:
        assert word_count("one two three") == 3
        assert word_count("one  two\nthree") == 3
        assert word_count("") == 0

    def test_average_word_length(self) -> None:
        assert average_word_length("ab abcd") == 3.0
        assert average_word_length("") == 0.0


if __name__ == "__main__":
    unittest.main()
