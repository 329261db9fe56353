from conftest import write_subscribers

from mailer.cli import main


def test_send_delivers_once_each(env, smtp, issue_file, tmp_path):
    write_subscribers(tmp_path / "subscribers.csv", 20)
    smtp.recorder.scripts = {"reader3@example.org": ["451", "ok"], "reader5@example.org": ["550"],
                             "reader7@example.org": ["drop-dot"], "reader9@example.org": ["drop-rcpt", "ok"]}
    assert main(["send", str(issue_file)]) == 1
    got = smtp.recorder.received()
    assert got["reader3@example.org"] == 1
    assert "reader5@example.org" not in got
    assert got["reader7@example.org"] == 1  # in doubt: the server got it, no resend
    assert got["reader9@example.org"] == 1
    assert sum(got.values()) == 19
    assert main(["send", str(issue_file)]) == 1
    assert sum(smtp.recorder.received().values()) == 19
