"""--round-robin: at most -j jobs, stdin open for the whole run, each block whole to one job,
every block fed once; jobs that exit early are dropped and the leftover input is reported."""

from pardo._batch import Batch, Template


def _run(blocks, jobs, command):
    batch = Batch(Template(command, append=False), iter(blocks), jobs=jobs,
                  blocks="round-robin", window=2, input_may_block=True)
    return batch, list(batch)


def test_every_block_reaches_one_job_whole():
    blocks = [f"{i:05d}\n".encode() * 2000 for i in range(40)]  # 12 KB each: pipes fill up
    batch, results = _run(blocks, 3, ["cat"])
    assert len(results) == 3 and all(r.status == "ok" for r in results)
    out = b"".join(r.stdout for r in results)
    assert sorted(out.splitlines()) == sorted(b"".join(blocks).splitlines())
    for r in results:  # a block is never split between jobs
        lines = r.stdout.splitlines()
        for k in range(0, len(lines), 2000):
            assert len(set(lines[k:k + 2000])) == 1
    assert not batch.round_robin.unfed


def test_one_job_per_block_until_there_are_j():
    assert len(_run([b"a\n"], 4, ["cat"])[1]) == 1
    assert _run([], 4, ["cat"])[1] == []


def test_input_left_when_every_job_has_gone_is_reported():
    blocks = [b"x" * 100_000 for _ in range(50)]
    batch, results = _run(blocks, 2, ["head -c 10 >/dev/null"])
    assert len(results) == 2
    assert batch.round_robin.unfed
