"""Differential tests of ``pardo run`` against GNU parallel, one group per behaviour that
issue 14 found wrong: each line runs in bash through both programs (with ``-k``) and must
give the same stdout, byte for byte, and the same exit status. Unlike the sweep, every case
here runs in CI."""

import pytest
from gnu_sweep import PARALLEL, run_sweep  # tests/helpers

pytestmark = pytest.mark.skipif(PARALLEL is None, reason="GNU parallel is not installed")

CASES = {
    "bundled short options": [
        "parallel -kv echo ::: a b",
        "parallel -kj2 echo ::: a b c",
        "parallel -kN3 echo ::: 1 2 3 4 5",
        "printf '1,2,3' | parallel -kd, echo",
        "parallel -vv echo ::: a",
        "parallel -kr echo ::: a '' b",
        "parallel -j1v echo ::: a >/dev/null",  # GNU: jobs "1v", an error
        "parallel -0k echo :::: abc0-file",
        "parallel -kQ echo ::: a >/dev/null",  # unknown letter inside a bundle: 255 in both
    ],
    "long option spellings and abbreviations": [
        "parallel --linebuffer -j1 echo ::: a b",
        "parallel --result outdir echo ::: A B >/dev/null; cat outdir/1/B/stdout",
        "parallel --joblo log echo ::: a; cut -f1,9 log",
        "parallel --dry echo ::: a",
        "parallel --tagstr X echo ::: a",
        "parallel --ta echo ::: a >/dev/null",  # ambiguous in GNU: --tag, --tagstring
        "parallel --keep echo ::: a >/dev/null",
        "parallel --jobs=2 echo ::: a b",
        "parallel -j=2 echo ::: a >/dev/null",
    ],
    "old --halt forms": [
        "parallel -j1 --halt -1 'echo {}; exit {}' ::: 1 0 2",
        "parallel -j1 --halt -2 'echo {}; exit {}' ::: 1 0 2",
        "parallel -j1 --halt 1 'echo {}; exit {}' ::: 0 3 2",
        "parallel -j1 --halt 2 'echo {}; exit {}' ::: 0 3 2",
        "parallel -j1 --halt 20% 'echo {}; exit {}' ::: 0 1 2 3 4 5 6 7 8 9",
        "parallel -j1 --halt soon,fail=2 'echo {}; exit {}' ::: 0 3 2 5",
    ],
    "--halt done=N: GNU's exit status": [
        "parallel -j1 --halt now,done=2 'echo {}' ::: 1 2 3 4",  # none failed: 101, as GNU
        "parallel -j1 --halt soon,done=3 'echo {}' ::: 1 2 3 4",
        "parallel -j1 --halt now,done=1 'echo {}; exit {}' ::: 3 2 0 0",
        "parallel -j1 --halt now,done=3 'echo {}; exit {}' ::: 1 2 0 0",
        "parallel -j1 --halt now,done=50% 'echo {}' ::: 1 2 3 4",
        "parallel -j1 --halt now,done=50% 'echo {}; exit {}' ::: 1 0 0 0",
    ],
    "--verbose is -t": [
        "parallel --verbose echo {} ::: A B C 2>/dev/null",
        "parallel -j1 --verbose echo {} ::: A B C 2>&1 >/dev/null",
        "parallel -t echo {} ::: A 2>&1",
    ],
    "--colsep trims, --trim": [
        "parallel --colsep , echo 'x{1}x{2}x' ::: 'a , b' ' c,d '",
        "parallel --colsep , --trim n echo 'x{1}x{2}x' ::: ' a , b '",
        "parallel --colsep , --trim l echo 'x{1}x{2}x' ::: ' a , b '",
        "parallel --trim r echo pre-{}-post ::: ' A '",
        "parallel --trim lr echo pre-{}-post ::: ' A '",
    ],
    "-a sources come first": [
        "parallel -a <(seq 6 7) echo {1} {2} {3} :::: <(seq 4 5) :::: <(seq 1 3)",
        "parallel -a abc-file echo ::: x y",
    ],
    "-d splits ::: values": [
        "parallel -d '\"' echo ::: 'a\"b'",
        "parallel -d , echo ::: a,b c",
    ],
    "--tagstring": [
        "parallel --tagstring bar echo foo-{} ::: A B C",
        "parallel --tagstring '{#}\\t' echo foo-{} ::: A B C",
        "parallel --tagstring '[{1}]' echo {2} ::: A B ::: x y",
    ],
    "-v with --tag": [
        "parallel --tag -v echo ::: A B",
    ],
    "{n} beyond the inputs": [
        "parallel echo {4} {5} ::: a b ::: c",
        "parallel echo {1}x{2} ::: a",
        "parallel -N2 echo {3}-{1} ::: a b c",
    ],
    "$PARALLEL, -J profiles, --env": [
        "PARALLEL=-j1 parallel 'echo {#}' ::: a b c",
        "PARALLEL='--tag' parallel echo ::: a b",
        "echo a b c | PARALLEL='-kvj1' parallel echo",
        "mkdir -p .parallel; echo '--tag' > .parallel/tagged; parallel -J tagged echo ::: a",
        "MYVAR=abc parallel --env MYVAR echo '$MYVAR' ::: baz",
    ],
    "PARALLEL_SEQ, PARALLEL_JOBSLOT, PARALLEL_PID in every job": [
        "parallel -j1 echo '$PARALLEL_SEQ' ::: a b c",
        "seq 10 | parallel -N2 echo seq:\\$PARALLEL_SEQ arg1:{1} arg2:{2}",
        "parallel -j1 'echo $PARALLEL_JOBSLOT' ::: a b c",
        "parallel -j1 --lb 'echo $PARALLEL_SEQ $PARALLEL_JOBSLOT' ::: a b",
        "parallel 'test -n \"$PARALLEL_PID\" && echo has-pid' ::: a",
        "printf 'echo $PARALLEL_SEQ\\n' > s.sh; parallel -j1 sh s.sh ::: a b",
        # set for every job, not only when the command names it
        "printf 'echo $PARALLEL_JOBSLOT-$1\\n' > s.sh; parallel -j1 sh s.sh ::: a b",
        # the slot freed first is taken next (GNU's order)
        "printf 'echo $PARALLEL_JOBSLOT-$1\\n' > s.sh; "
        "parallel -j2 'sleep {}; sh s.sh {}' ::: 0.6 0.2 0.4 0.4",
        "parallel -j3 'sleep {}; echo {%}' ::: 1 0.2 0.6 0.2 0.2",
    ],
    "joblog Receive and Signal": [
        "parallel --joblog log 'echo {}' ::: aaaa bb >/dev/null; cut -f1,6,9 log",
        "parallel --joblog log --timeout 0.3 'trap \"\" TERM; sleep 4' ::: 1; cut -f1,7,8 log",
        "parallel --joblog log --timeout 0.3 sleep ::: 0 5; cut -f1,7,8 log",
    ],
    "-q/--quote": [
        "parallel -q perl -e 'print \"@ARGV\\n\"' ::: This works",
        "parallel --quote printf '%s|%s\\n' {} 'a b' ::: x y",
        "echo test | parallel -q echo {} \\$VAR",
        "parallel -qk echo '{} x' ::: 'a b'",
        "parallel -q --dry-run echo 'x{}y' ::: \"it's\"",
    ],
    "-E/--eof": [
        "parallel -E stop echo ::: A B stop C D",
        "parallel --eof stop echo ::: A B stop C D ::: x stop y",
        "printf 'a\\nb\\nEND\\nc\\n' | parallel -E END echo",
    ],
    "-L/-l/--max-lines": [
        "seq 8 | parallel -L2 echo",
        "seq 8 | parallel -l3 echo",
        "seq 3 | parallel -l echo",
        "seq 5 | parallel --max-lines 2 echo x{}y",
        "seq 5 | parallel -L 2 echo x{}y",
    ],
    "--header": [
        "parallel --header : echo f1={f1} f2={f2} ::: f1 A B ::: f2 C D",
        "parallel --header : --colsep '\\t' echo f1={f1} f2={f2} :::: tsv-file.tsv",
        "parallel --colsep , --header : echo {name}={value} :::: csv-file",
        "parallel --header : echo x{X}y{Y} ::: X 1 2 ::: Y 3 4",
    ],
    "durations with units": [
        "parallel --delay 0.1s echo ::: 1 2",
        "parallel --timeout 1m echo ::: 1",
    ],
    "--pipe": [
        "cat num30000 | parallel --pipe wc",
        "cat num30000 | parallel --pipe --block 20k wc",
        "cat num30000 | parallel --pipe -N7000 wc",
        "cat num30000 | parallel --pipe -L7000 wc",
        "seq 10 | parallel --pipe -N3 echo JOB{#}\\;cat",
        "cat num_%header | parallel --header 2 --pipe -N3 echo JOB{#}\\;cat",
        "printf 'foo, bar, baz, qux, ' | parallel -N1 --recend ', ' --pipe echo JOB{#}\\;cat",
        "printf '/foo/bar/baz' | parallel -N1 --recstart / --pipe echo JOB{#}\\;cat\\;echo",
        "printf 'foo,_bar,__baz' | parallel -N1 --regexp --recend ,_+ --pipe echo J\\;cat",
        "parallel --pipepart -a num30000 --block 50k wc -l | awk '{s+=$1} END {print s}'",
        "seq 100 | parallel --pipe --block 30 wc -l",
        "printf '' | parallel --pipe echo x",
        "cat num8 | parallel --pipe -N3 --tag cat",
        "seq 5 | parallel --pipe -v cat",
    ],
    "--round-robin: jobs whose stdin stays open take the blocks in turn": [
        "cat num30000 | parallel --pipe -j4 --roundrobin wc | awk '{s+=$1} END {print s}'",
        "seq 100000 | parallel --pipe -j4 --block 100k --round-robin wc -l | "
        "awk '{s+=$1} END {print s, NR}'",  # 4 jobs, every line counted once
        "seq 10 | parallel --pipe -j4 --roundrobin wc",  # one block: one job
        "printf '' | parallel --pipe -j4 --roundrobin wc",  # no block: no job
        "seq 100000 | parallel --pipe -j3 --block 50k --round-robin -k --tag wc -l | cut -f1",
        "seq 100000 | parallel --pipe -j3 --block 50k --round-robin --lb wc -l | "
        "awk '{s+=$1} END {print s, NR}'",
    ],
    "--plus": [
        "parallel --plus echo {+/}/{/..}.{+..} ::: dir/sub/file.ex1.ex2.ex3",
        "parallel --plus echo {...}.{+...} {/...} {+.} ::: dir/sub/file.ex1.ex2.ex3 a",
        "parallel --plus echo Job {#} of {##} ::: 1 2 3 4 5",
        "parallel --plus echo {:-myval} {:2} {:2:3} ::: abcdef ''",
        "parallel --plus echo {#bc} {##a*c} {#a*c} {%de} {%%d*f} {%d*f} ::: abcdefdef",
        "parallel --plus echo {/def/ghi} {//e/E} {/#ab/X} {/%ef/Y} ::: abcdefdef",
        "parallel --plus echo {^a} {^^a} '{,A}' '{,,A}' ::: abca ABCA",
        "parallel --plus echo {2..} {1+..} ::: a.tar.gz ::: b.c.d",
        "parallel --plus -q echo '{%.gz} x' ::: a.tar.gz",
    ],
    "--files, --tmpdir": [
        "parallel --files echo ::: A B C | xargs cat",
        "parallel --tmpdir . --files echo ::: A B C | sed 's/par.*par/F/'",
        "parallel --tmpdir . --files echo ::: A B C | xargs cat",
        "parallel --results outdir --files echo ::: A B",
    ],
    "--extensionreplace and its siblings": [
        "parallel --er ,, echo ,, ::: A/B.C",
        "parallel --bnr ,, --dnr ,,, echo ,, ,,, ::: A/B.C",
        "parallel --basenameextensionreplace ,, echo ,, ::: A/B.C",
        "parallel -j1 --seqreplace ,, --slotreplace @@ echo ,, @@ ::: A B C",
    ],
    "--results NAME.csv|.tsv|.json, and no output with --results": [
        "parallel --results out.tsv 'echo {}; echo e >&2' ::: A 'B C'; cut -f1,2,5-20 out.tsv",
        "parallel --results out.csv 'echo {}' ::: A 'B,C' 'q\"x'; cut -d, -f1,2,5-20 out.csv",
        "parallel --results o.json echo ::: A 'q\"x'; sed 's/\"Starttime.*\"Send/S/' o.json",
        "parallel --results outdir echo ::: A B C; find outdir -type f | sort",
    ],
    "--results DIR with --header: the column names name the directories": [
        "parallel --header : --results o echo ::: f2 A B ::: f1 C D >/dev/null; find o | sort",
        "parallel --header : --results o echo ::: 10 A ::: 9 C >/dev/null; find o | sort",
        "parallel --header : --results o --files echo ::: f2 A B ::: f1 C D",
        # GNU names the k-th file source's column after the file
        "parallel --header : --colsep , --results o echo {name} :::: csv-file >/dev/null; "
        "find o | sort",
        "parallel --header : echo {abc-file} {def-file.} :::: abc-file def-file",
        "parallel -N2 --results o echo ::: a b c d ::: x >/dev/null; find o -name seq | sort",
        "parallel --header : --colsep , echo {name.} {value/} :::: csv-file",
    ],
    "counts with GNU's units": [
        "parallel -kj2k echo ::: a b >/dev/null",  # not for -j: an error in both
        "parallel -n2k echo ::: a b c",
    ],
    "-X, -m, --xargs, -s/--max-chars, --show-limits": [
        "cat abc-file | parallel -X echo",
        "parallel -j3 -X echo pre-{}-post ::: A B C D E F G",  # the last ones spread over 3
        "parallel -j2 -m echo ::: 1 2 3 4 5 6 7 8 9 10",
        "parallel --xargs -j3 echo ::: 1 2 3 4 5 6 7",  # --xargs does not spread
        "cat num30000 | parallel -j3 -m -s 2000 echo x{}y | md5sum",
        "cat num30000 | parallel -X -s 200 echo x{}y | tail -3",
        "cat num30000 | parallel -j1 -N10000 'echo {1} {10000}'",  # GNU's estimate breaks
        "parallel -X -s 60 echo {#} {} {.} ::: a.x b.y c.z d.w e.v f.u g.t",
        "parallel -X --tag -s 40 echo ::: a b c d e f g h i j k l",
        "parallel -m -j2 --tagstring '<{}>' -s 20 echo ::: a b c d e f g",
        "parallel -X -j2 --bar -s 20 echo ::: a b c d e f g 2>/dev/null",
        "parallel -q -X -s 60 echo ::: a b c d e f g h i j",
        "parallel -X -s 30 echo {1}-{2} ::: a b c ::: d e f",
        "parallel -j2 -m -n2 echo ::: 1 2 3 4 5 6 7",
        "parallel -X --dry-run echo ::: 'a b' c",
        "parallel -X -s 5 echo ::: aaaaaa",  # one argument too long: 255 in both
        "parallel -s 100000000 -X echo ::: a b 2>/dev/null",  # too big: a warning, GNU's limit
        "parallel --show-limits echo ::: a",
    ],
    "{= perl =} and --rpl, by one perl process": [
        "parallel echo '{= s:\\.[^.]+$::;s:\\.[^.]+$::; =}' ::: foo.tar.gz",
        "parallel echo '{=2 s:\\.[^.]+$::; =} {1}' ::: a.b ::: foo.tar.gz",
        "parallel echo '{=1 $_.=\"!\" =}' '{=-1 $_.=\"?\" =}' ::: a ::: b",
        "parallel echo Job {#} of {= '$_=total_jobs()' =} ::: 1 2 3",
        "parallel echo {} is {= '$_=Q($_)' =} ::: '*/!#$'",
        "parallel echo {= 'uq()' =} ::: 'a b;echo x'",
        "parallel echo {= '$_=$arg[1].$arg[2]' =} ::: a b ::: c d",
        "parallel -j1 echo '{= $a++; $_=$a =}' ::: a b c",  # one interpreter for the run
        "parallel -j1 echo '{= $_=$job->seq() =}' '{= $_=slot() =}' ::: a b c",
        "parallel --joblog jl echo {= 'if($_==3) { skip() }' =} ::: 1 2 3 4; cut -f1,7,9 jl",
        "parallel -v echo {= 'if($_==3) { skip() }' =} ::: 1 2 3 4",
        "parallel -X -j1 echo '{= s/a/b/ =}' ::: a ab ac",
        "parallel -q echo '{= s/a/ b/ =}' ::: a ab",
        "parallel --tagstring '{= $_=uc($_) =}' echo ::: a b",
        "printf 'a\\nb\\n' | parallel echo '{= $_=length($_) =}'",
        "parallel echo '{=' s/a/b/ '=}' ::: a",
        "parallel echo '{= syntax error( =}' ::: a",  # does not compile: 255 in both
        "parallel --rpl '{..} s:\\.[^.]+$::;s:\\.[^.]+$::;' echo '{2..} {1}' ::: a.b ::: c.d.e",
        "parallel --rpl '{%(.+?)} s/$$1$//;' echo {%.tar.gz}.zip ::: foo.tar.gz",
        "parallel --rpl '{/(.+?)/(.*?)} s/$$1/$$2/;' echo {/tar.gz/zip} ::: foo.tar.gz",
        "parallel --rpl '{} s/a/A/' echo {} ::: abc",
        "parallel --rpl '% s/a/A/' echo % {%} ::: abc",  # {%} is longer: not eaten by %
        "parallel --parens ,,,, echo ',, s:\\.[^.]+$::; ,,' ::: foo.tar.gz",
        "parallel --parens abc echo 'a$_=uc($_)bc' ::: x",  # odd: 'a' opens, 'bc' closes
        "seq 3 | parallel echo '{= $_=total_jobs() =}'",  # stdin read whole first, as GNU
        "parallel --tagstring '{= $_=total_jobs() =}' echo ::: a b",
        "parallel --dry-run echo {= 'if($_==3) { skip() }' =} ::: 1 2 3 4",  # exit 1
    ],
    "--arg-sep, --arg-file-sep": [
        "parallel --arg-sep ,, echo ,, A B C :::: def-file",
        "parallel --arg-file-sep // echo ::: A B C // def-file",
    ],
}
LINES = [(k, line) for k, lines in CASES.items() for line in lines]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    cases = [(i, line, None) for i, (_, line) in enumerate(LINES)]
    return run_sweep(cases, tmp_path_factory.mktemp("compat"))


@pytest.mark.parametrize("i", range(len(LINES)), ids=[f"{k}: {line}"[:70] for k, line in LINES])
def test_same_as_gnu_parallel(results, i):
    gnu, ours = results[i]
    assert ours == gnu, LINES[i][1]


def test_pipe_memory_stays_bounded():
    """--pipe streams: 400 MiB through `wc -c` in 1 MiB blocks, and pardo's peak RSS stays
    far below the input (GNU parallel's own peak is ~20 MiB). Measured in a fresh wrapper
    process, whose only child is pardo."""
    import subprocess
    import sys

    from gnu_sweep import pardo_shell_command

    wrapper = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
               "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
               "file=sys.stderr)")
    gen = subprocess.Popen(["sh", "-c", "yes 0123456789abcdef | head -c 419430400"],
                           stdout=subprocess.PIPE)
    try:
        p = subprocess.run([sys.executable, "-c", wrapper, *pardo_shell_command().split(), "--pipe",
                            "wc -c"], stdin=gen.stdout, capture_output=True, timeout=120)
    finally:
        gen.stdout.close()
        gen.wait()
    rc, peak_kib = map(int, p.stderr.split()[-2:])
    assert rc == 0
    assert sum(int(x) for x in p.stdout.split()) == 419430400
    assert peak_kib < 100 * 1024, f"peak RSS {peak_kib} KiB"
