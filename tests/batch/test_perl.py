"""{= perl =} and --rpl: templates mark perl code, one perl process evaluates it (GNU
parallel's package Arg and helpers), and a run without perl is refused in one line."""

import shutil

import pytest

from pardo._batch import PerlExpressions, Template
from pardo._errors import TemplateError

pytestmark = pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed")


@pytest.fixture
def perl():
    p = PerlExpressions()
    yield p
    p.close()


def render(words, args, perl, seq=1, slot=1, **kw):
    t = Template(words, perl=perl, **kw)
    perl.start()
    return t, t.command(args, seq, slot)


def test_an_expression_changes_the_value_and_the_result_is_quoted(perl):
    _, line = render(["echo", "{= s/a/ A/ =}"], ("ab",), perl)
    assert line == "echo ' Ab'"


def test_positional_and_unquoted(perl):
    _, line = render(["echo", "{=2 $_=uc($_) =}", "{= uq(); $_ .= ';' =}"], ("a", "b"), perl)
    assert line == "echo B a; b;"


def test_helpers_seq_slot_arg_and_state_between_jobs(perl):
    t = Template(["echo", "{= $_ = seq().slot().$arg[1] =}"], perl=perl)
    counter = Template(["{= $n++; $_ = $n =}"], perl=perl)
    perl.start()
    assert t.command(("x",), 7, 2) == "echo 72x"
    # one interpreter for the run: its variables live from one job to the next
    assert [counter.command(("v",), seq) for seq in (1, 2, 3)] == ["1", "2", "3"]


def test_skip_is_reported_by_the_template(perl):
    t, line = render(["echo", "{= skip() if $_ == 3 =}"], ("3",), perl)
    assert line == "echo 3" and t.skipped
    assert t.command(("4",)) == "echo 4" and not t.skipped


def test_rpl_tags_with_groups_and_positions(perl):
    rpl = ["{%(.+?)} s/$$1$//;", "{..} s:\\.[^.]+$::;s:\\.[^.]+$::;"]
    _, line = render(["echo", "{%.gz}", "{2..}", "{}"], ("a.tar.gz", "b.c.d"), perl, rpl=rpl)
    assert line == "echo a.tar b.c.d b a.tar.gz b.c.d"  # {%.gz} takes every value


def test_a_short_rpl_does_not_eat_a_longer_builtin(perl):
    _, line = render(["echo", "%", "{%}"], ("abc",), perl, slot=2, rpl=["% s/a/A/"])
    assert line == "echo Abc 2"


def test_code_that_does_not_compile_is_one_line(perl):
    Template(["echo", "{= s/( =}"], perl=perl)
    with pytest.raises(TemplateError, match="cannot use the perl expression") as info:
        perl.start()
    assert "\n" not in str(info.value)


def test_no_perl_on_path_is_refused_clearly(perl, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    Template(["echo", "{= s/a/b/ =}"], perl=perl)
    with pytest.raises(TemplateError, match="need perl.*not on PATH"):
        perl.start()
