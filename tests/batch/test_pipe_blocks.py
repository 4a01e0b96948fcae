"""The --pipe block splitter: GNU parallel's cuts, from a stream read a block at a time."""

import io

import pytest

from pardo._batch.pipe import blocks, parse_block_size, read_header

NUMS = b"".join(b"%d\n" % i for i in range(1, 30001))


def cuts(data, **kw):
    return list(blocks(io.BytesIO(data), **kw))


def test_blocks_end_at_the_last_newline_within_the_block_size():
    got = [(b.count(b"\n"), len(b)) for b in cuts(NUMS, block_size=20000)]
    # GNU parallel 20221122: cat num30000 | parallel --pipe --block 20k wc
    assert got == [(4221, 19998), (4000, 20000), (3629, 19996), (3333, 19998), (3333, 19998),
                   (3333, 19998), (3333, 19998), (3333, 19998), (1485, 8910)]
    assert b"".join(cuts(NUMS, block_size=20000)) == NUMS


def test_records_lines_and_separators():
    assert [b.count(b"\n") for b in cuts(NUMS, records=7000)] == [7000] * 4 + [2000]
    assert [b.count(b"\n") for b in cuts(NUMS, lines=7000)] == [28000, 2000]
    assert cuts(b"foo, bar, baz, qux, ", recend=b", ", records=1) == [
        b"foo, ", b"bar, ", b"baz, ", b"qux, "]
    assert cuts(b"/foo/bar/baz", recend=b"", recstart=b"/", records=1) == [
        b"/foo", b"/bar", b"/baz"]
    assert cuts(b"/foo/bar/baz", recend=b"", recstart=b"/", block_size=6) == [
        b"/foo", b"/bar", b"/baz"]
    assert cuts(b"foo,_bar,__baz,___qux", recend=b",_+", regexp=True, records=1) == [
        b"foo,_", b"bar,__", b"baz,___", b"qux"]


def test_a_record_longer_than_a_block_is_one_block_and_the_tail_is_kept():
    # GNU grows the block size 10 -> 14 -> 20 ... -> 115 and keeps it
    long = b"a" * 100 + b"\nbb\nc\nddddd\ne\n"
    assert cuts(long, block_size=10) == [long]
    assert cuts(long + b"x\n" * 60, block_size=10) == [long, b"x\n" * 57, b"x\n" * 3]
    assert cuts(b"x\ny") == [b"x\n", b"y"]
    assert cuts(b"") == []


def test_blocks_are_streamed_not_read_whole():
    class Counting(io.BytesIO):
        most = 0

        def read(self, n=-1):
            assert n is not None and n > 0, "read everything at once"
            Counting.most = max(Counting.most, n)
            return super().read(n)

    it = blocks(Counting(NUMS * 10), block_size=4096)
    next(it)
    assert Counting.most <= 4096


def test_sizes_and_headers():
    assert parse_block_size("1M") == 1 << 20
    assert parse_block_size("20k") == 20000
    assert parse_block_size("2Ki") == 2048
    with pytest.raises(ValueError):
        parse_block_size("lots")
    assert read_header(io.BytesIO(b"%h1\n%h2\n1\n2\n"), "2") == (b"%h1\n%h2\n", b"1\n2\n")
    assert read_header(io.BytesIO(b"%h1\n%h2\n1\n"), "(%.*\n)*") == (b"%h1\n%h2\n", b"1\n")
