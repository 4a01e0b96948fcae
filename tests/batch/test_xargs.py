"""Command lines filled up to a length (-X, -m, -s): GNU parallel's length estimate, its
limit, the spread of the last arguments over the job slots, and streaming."""

import itertools
import os

import pytest

from pardo._batch import LineLength, Template, command_line_limits, fill_lines
from pardo._errors import InputError


def _lines(words, values, max_len, *, context=False, slots=None, max_args=None):
    t = Template(words, context=context)
    length = LineLength(t, context=context)
    spread = (lambda: slots) if slots else None
    out = fill_lines(((v,) for v in values), length, max_len, max_args=max_args,
                     spread_over=spread)
    return [t.command(args) for args in out]


@pytest.mark.skipif(os.sysconf("SC_PAGE_SIZE") != 4096, reason="the figure is for 4 KiB pages")
def test_limits_are_gnu_parallels_probe_on_linux():
    # GNU parallel 20221122 --show-limits on Linux with 4 KiB pages
    assert command_line_limits() == (130329, 63664)


def test_a_line_stays_under_the_limit_as_gnu_estimates_it():
    # "echo aaaa bbbb ..." is 5 + 5 per value: 29 < 30, a sixth value would make 34
    vals = ["aaaa", "bbbb", "cccc", "dddd", "eeee", "ffff", "gggg"]
    assert _lines(["echo"], vals, 30) == ["echo aaaa bbbb cccc dddd eeee", "echo ffff gggg"]


def test_context_replace_repeats_the_word():
    assert _lines(["echo", "pre-{}-post"], ["A", "B"], 100, context=True) == \
        ["echo pre-A-post pre-B-post"]
    assert _lines(["echo", "pre-{}-post"], ["A", "B"], 100) == ["echo pre-A B-post"]


def test_the_last_arguments_are_spread_over_the_slots():
    assert _lines(["echo"], [str(i) for i in range(1, 11)], 1000, slots=4) == \
        ["echo 1 2 3", "echo 4 5 6", "echo 7 8 9", "echo 10"]
    # only the line that reaches the end of the input is spread
    assert _lines(["echo"], ["aa", "bb", "cc", "dd"], 14, slots=2) == \
        ["echo aa bb cc", "echo dd"]
    assert _lines(["echo"], ["aa", "bb", "cc", "dd", "ee"], 14, slots=2) == \
        ["echo aa bb cc", "echo dd", "echo ee"]


def test_gnu_estimate_counts_a_positional_string_for_every_record():
    # -N40 with {1}: GNU adds every record's first value (and a blank per record), so a
    # line breaks at 23 records, as `parallel -s 100 -N40 echo {1} {40}` does
    out = _lines(["echo {1} {40}"], [str(i) for i in range(10, 100)], 100, context=True,
                 max_args=40)
    assert out == ["echo 10 ", "echo 33 ", "echo 56 ", "echo 79 "]


def test_one_input_longer_than_the_limit_is_refused():
    with pytest.raises(InputError, match=r"command line too long \(11 >= 5\)"):
        _lines(["echo"], ["aaaaaa"], 5)


def test_lines_stream():
    t = Template(["echo"])
    out = fill_lines(((str(i),) for i in itertools.count()), LineLength(t, context=False), 40)
    assert next(out) == tuple(str(i) for i in range(15))  # as `parallel -s 40 -m`
