"""Templates: GNU parallel's replacement strings and quoting, and the direct-exec argv that
must equal what ``sh -c`` would have run."""

import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pardo._batch.inputs import encode
from pardo._batch.template import Template, perl_dirname, shell_quote
from pardo._errors import TemplateError


@pytest.mark.parametrize("value,quoted", [
    ("abc", "abc"),
    ("a-b_c.d+e/f", "a-b_c.d+e/f"),
    ("", "''"),
    ("a b", "'a b'"),
    ("it's", "'it'\"'\"'s'"),
    ("'", "\"'\""),
    ("''", "\"'\"''\"'\""),
    ("'a", "\"'\"'a'"),
    ("$(id)", "'$(id)'"),
    ("é", "'é'"),
])
def test_shell_quote_is_gnus(value, quoted):
    assert shell_quote(value) == quoted


@pytest.mark.parametrize("path,dirname", [
    ("a/b", "a"), ("a", "."), ("/a", "/"), ("/", "/"), ("a/b/", "a"), ("", "."),
    ("a//b", "a"), ("//a", "/"), ("a/", "."), ("./x", "."),
])
def test_dirname_is_perls(path, dirname):
    assert perl_dirname(path) == dirname


def render(words, args, **kw):
    return Template(words, **kw).command(args, 7, 2)


def test_replacement_strings():
    t = ["echo", "{}", "{.}", "{/}", "{//}", "{/.}", "{#}", "{%}"]
    assert render(t, ["d/a.b.c"]) == "echo d/a.b.c d/a.b a.b.c d a.b 7 2"
    assert render(["echo", "{.}"], ["dir.d/file"]) == "echo dir.d/file"


def test_braces_appended_when_command_has_none():
    assert render(["echo", "x"], ["a b"]) == "echo x 'a b'"
    assert render(["echo", "{#}"], ["a"]) == "echo 7"  # {#} counts as a replacement string


def test_positional_and_missing_positional():
    assert render(["echo", "{2}", "{1}", "{-1}", "{3}"], ["a", "b c"]) == "echo 'b c' a 'b c' "


def test_multiple_args_splice_or_repeat_in_context():
    assert render(["echo", "x{}y"], ["a", "b c"]) == "echo xa 'b c'y"
    assert render(["echo", "x{}y"], ["a", "b c"], context=True) == "echo xay x'b c'y"


def test_program_from_input_is_not_quoted():
    assert render([], ["echo a b"]) == "echo a b"
    assert render(["{}"], ["echo a"]) == "echo a"
    assert Template([]).argv(["echo a"]) is None


def test_replace_string_option():
    assert render(["echo", "<@>", "{}"], ["a b"], replace="@") == "echo <'a b'> {}"


def test_perl_expressions_need_the_runs_perl():
    # map_commands has no perl process: {= =} is refused there (pardo run has one)
    with pytest.raises(TemplateError, match="perl"):
        Template(["echo", "{= s/a/b/ =}"])


@pytest.mark.parametrize("words,direct", [
    (["true"], True),
    (["gzip", "-9", "{}"], True),
    (["a=b", "{}"], False),
    (["echo", "{}", ">", "out"], False),
    (["echo $HOME"], False),
    (["cd", "{}"], False),
    (["ls", "*.c"], False),
    (["sleep", "1;", "echo"], False),
    (["printf", "%s"], False),
])
def test_direct_exec_only_without_shell_syntax(words, direct):
    assert (Template(words).argv(["v"]) is not None) is direct


def test_echo_goes_through_the_shell_when_it_could_differ():
    t = Template(["echo"])
    assert t.argv(["plain"]) == ["echo", "plain"]
    assert t.argv(["a\\nb"]) is None  # sh's echo interprets backslashes
    assert t.argv(["-n"]) is None


def _shell_words(command):
    # Literal text of a direct-exec template is inert, so `set --` + the command line gives
    # exactly the words sh would exec.
    script = "set -- " + command + '; for a; do printf "%s\\0" "$a"; done'
    p = subprocess.run(["/bin/sh", "-c", script], capture_output=True, check=True)
    return p.stdout.split(b"\0")[:-1]


# No lone surrogates in text (category Cs, which naming another category lets in): only
# the ones surrogateescape makes from undecodable bytes stand for bytes (surrogate_bytes).
values = st.text(st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\0")
                 | st.sampled_from(list("\n\t\\'\" $`*?[]{}~#!;&|<>=-")), max_size=12)
surrogate_bytes = st.binary(max_size=8).map(lambda b: b.replace(b"\0", b"").decode(
    "utf-8", "surrogateescape"))


@settings(max_examples=150, deadline=None)
@given(args=st.lists(values | surrogate_bytes, min_size=1, max_size=4),
       shape=st.sampled_from([["prog", "{}"], ["prog", "x{}y", "{1}"], ["prog", "{2}", "-{-1}-"],
                              ["prog", "{/}", "{.}", "{//}"], ["prog"]]),
       context=st.booleans())
def test_argv_equals_what_sh_would_exec(args, shape, context):
    t = Template(shape, context=context)
    argv = t.argv(args, 3, 1)
    assert argv is not None
    assert [encode(a) for a in argv] == _shell_words(t.command(args, 3, 1))


@settings(max_examples=150, deadline=None)
@given(value=values | surrogate_bytes)
def test_any_value_arrives_byte_exact_through_the_shell(value):
    t = Template(["printf '%s'", "{}"])
    assert t.argv([value]) is None
    out = subprocess.run(["/bin/sh", "-c", t.command([value])], capture_output=True).stdout
    assert out == encode(value)


@settings(max_examples=200, deadline=None)
@given(args=st.lists(values | surrogate_bytes, max_size=4),
       shape=st.sampled_from([["prog"], ["prog", "{}"], ["prog", "-x", "{}", "y z"], ["{}"],
                              ["prog", " ", "{}"], ["a=1", "prog"], ["prog", "X"], []]),
       kw=st.sampled_from([{}, {"context": True}, {"quote": False}, {"replace": "X"},
                           {"append": False}]))
def test_the_one_input_field_shortcut_renders_as_the_groups_do(args, shape, kw):
    # command() of literal words around one {} skips the walk over the groups: the same
    # text, whatever the quoting, context replacement or number of values
    t = Template(shape, **kw)
    walk = Template(shape, **kw)
    walk._around = None
    assert t.command(args, 3, 1) == walk.command(args, 3, 1)
    if shape in (["prog"], ["prog", "{}"], ["{}"]) and not kw:
        assert t._around is not None  # the usual commands take the shortcut
