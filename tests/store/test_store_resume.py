"""What a resume learns from a store: which tasks are done or failed, and whether the
run it would continue is the same one."""

from __future__ import annotations

import pytest
from storehelp import make_result

from pardo._store import StoreMismatch, StoreReader, StoreSink


@pytest.fixture
def store(tmp_path):
    path = str(tmp_path / "runs.db")
    sink = StoreSink(path)
    sink.run_started(template="measure {1} {2}", inputs={"sources": [":::", "a b c"]})
    sink.task_done(1, ("a", "x"), "measure a x", 1, make_result())
    sink.task_done(2, ("b", "x"), "measure b x", 1, make_result("failed", 3), final=False)
    sink.task_done(2, ("b", "x"), "measure b x", 2, make_result("failed", 3))
    sink.task_done(3, ("c", "x"), "measure c x", 1, make_result("timeout", None, deadline=1))
    sink.task_done(5, ("é\udcff", "x"), "measure e x", 1, make_result())
    # task 4 was running when pardo died: no record
    sink.run_ended("killed")
    return path


def test_completed_and_failed_tasks(store):
    with StoreReader(store) as rd:
        st = rd.resume_state()
        failed = list(rd.failed_tasks())
    assert list(st.seqs) == [1, 2, 3, 5] and list(st.failed) == [2, 3]
    resume, resume_failed = st.skip("resume"), st.skip("resume-failed")
    assert [s for s in range(1, 7) if s not in resume] == [4, 6]
    assert [s for s in range(1, 7) if s not in resume_failed] == [2, 3, 4, 6]
    assert failed == [(2, ("b", "x"), "measure b x"), (3, ("c", "x"), "measure c x")]


def test_the_same_run_may_resume(store):
    with StoreReader(store) as rd:
        st = rd.resume_state()
    st.check_run("measure {1} {2}", {"sources": [":::", "a b c"]})
    for seq, args in ((1, ("a", "x")), (5, ("é\udcff", "x")), (4, ("anything",))):
        st.check_task(seq, args)


def test_another_template_is_refused_showing_the_difference(store):
    with StoreReader(store) as rd:
        st = rd.resume_state()
    with pytest.raises(StoreMismatch) as e:
        st.check_run("measure --fast {1} {2}", {"sources": [":::", "a b c"]})
    msg = str(e.value)
    assert "command template was 'measure {1} {2}', now 'measure --fast {1} {2}'" in msg
    assert "--force" in msg and "\n" not in msg
    st.check_run("measure --fast {1} {2}", None, force=True)


def test_other_inputs_are_refused_showing_the_difference(store):
    with StoreReader(store) as rd:
        st = rd.resume_state()
    with pytest.raises(StoreMismatch, match=r'inputs were .*"a b c".*, now .*"a b d"'):
        st.check_run("measure {1} {2}", {"sources": [":::", "a b d"]})
    with pytest.raises(StoreMismatch, match=r"the inputs of task 1 differ from the ones recorded: "
                                             r"were \['a', 'x'\], now \['a', 'y'\]"):
        st.check_task(1, ("a", "y"))
    st.check_task(1, ("a", "y"), force=True)


def test_an_empty_store_resumes_everything(tmp_path):
    path = str(tmp_path / "runs.db")
    StoreSink(path).close()
    with StoreReader(path) as rd:
        st = rd.resume_state()
    assert st.first_run is None and 1 not in st.skip("resume")
    st.check_run("anything", ["x"])
