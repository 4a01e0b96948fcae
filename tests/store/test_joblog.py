"""GNU parallel's joblog: writing rows, reading them back, a torn last row."""

from pardo._store.joblog import HEADER, JobLog, read_joblog


def test_joblog_round_trip_and_torn_last_row(tmp_path):
    path = tmp_path / "log"
    log = JobLog(str(path))
    log.write(1, 1700000000.5, 0.25, 0, 0, "echo 'a b'")
    log.write(2, 1700000001.0, 1.0, -1, 15, "sleep 9")
    log.close()
    text = path.read_text()
    assert text.startswith(HEADER)
    assert text.splitlines()[1] == "1\t:\t1700000000.500\t     0.250\t0\t0\t0\t0\techo 'a b'"
    with open(path, "a") as f:
        f.write("3\t:\t17000")  # pardo killed mid-row
    jobs = read_joblog(str(path))
    assert sorted(jobs) == [1, 2]
    assert jobs[1].ok and not jobs[2].ok and jobs[2].command == "sleep 9"
    log = JobLog(str(path), append=True)  # no second header; the torn row is cut off
    log.write(3, 1700000002.0, 0.5, 0, 0, "true")
    log.close()
    lines = path.read_text().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == ["Seq", "1", "2", "3"]
