"""The subscriber list: the CSV as spreadsheets write it, read lazily, never trusted in a header."""

from __future__ import annotations

import inspect
import re
from email import message_from_bytes, policy
from email.headerregistry import Address
from pathlib import Path

import pytest
from conftest import ledger_rows, write_csv
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.cli import main
from mailer.errors import SubscribersError
from mailer.subscribers import Recipient, SkippedRow, clean_name, read_subscribers

ISSUE = "2026-11-24"


def rows_of(path: Path) -> list[Recipient | SkippedRow]:
    return list(read_subscribers(path))


# -- reading -----------------------------------------------------------------------------


def test_bom_header_case_spaces_and_quoted_commas(tmp_path):
    path = write_csv(
        tmp_path / "list.csv",
        ' Email , NAME ,Status , Signed up\n'
        '"doe@example.org","Doe, Jane",active,"2024-01-01, at noon"\n'
        'roe@example.org,Richard Roe,,\n',
        encoding="utf-8-sig",  # what Excel writes: a BOM before the header
    )
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert rows_of(path) == [
        Recipient(2, "doe@example.org", "Doe, Jane"),
        Recipient(3, "roe@example.org", "Richard Roe"),
    ]


def test_only_the_email_column_is_needed(tmp_path):
    path = write_csv(tmp_path / "list.csv", "EMAIL\nann@example.org\n")
    assert rows_of(path) == [Recipient(2, "ann@example.org", "")]


@pytest.mark.parametrize("status", ["", "active", "Active", " subscribed ", "SUBSCRIBED"])
def test_active_statuses_are_sent(tmp_path, status):
    path = write_csv(tmp_path / "list.csv", f"email,status\nann@example.org,{status}\n")
    assert rows_of(path) == [Recipient(2, "ann@example.org")]


@pytest.mark.parametrize("status", ["unsubscribed", "bounced", "complained", "Bounced"])
def test_other_statuses_are_skipped_with_the_reason(tmp_path, status):
    path = write_csv(tmp_path / "list.csv", f"email,status\nann@example.org,{status}\n")
    [row] = rows_of(path)
    assert isinstance(row, SkippedRow)
    assert row.row == 2
    assert status.lower() in row.reason


def test_invalid_addresses_are_skipped_with_row_number_and_reason(tmp_path):
    path = write_csv(
        tmp_path / "list.csv",
        "email,name\n"
        "ok@example.org,Fine\n"
        "not-an-address,Bad\n"
        "two@at@example.org,Bad\n"
        ",No address\n"
        "user@,Bad\n"
        "last@example.org,Fine\n",
    )
    rows = rows_of(path)
    assert [r.email for r in rows if isinstance(r, Recipient)] == ["ok@example.org", "last@example.org"]
    skipped = {r.row: r for r in rows if isinstance(r, SkippedRow)}
    assert sorted(skipped) == [3, 4, 5, 6]
    assert skipped[3].reason.startswith("invalid address:")
    assert skipped[4].reason.startswith("invalid address:")
    assert skipped[5].reason == "no address"
    assert skipped[6].reason.startswith("invalid address:")
    # The reason says what is wrong, not only that something is.
    assert all(len(skipped[n].reason) > len("invalid address: ") for n in (3, 4, 6))


def test_invalid_rows_are_not_fatal_and_the_plan_names_them(env, smtp, issue_file, tmp_path, capsys):
    write_csv(
        tmp_path / "subscribers.csv",
        "email,name,status\nok@example.org,A,\nnot-an-address,B,\ngone@example.org,C,unsubscribed\n",
    )
    assert main(["send", str(issue_file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "send  ok@example.org" in out
    assert "row 3: not-an-address: skipped: invalid address" in out
    assert "row 4: gone@example.org: skipped: status is 'unsubscribed'" in out

    assert main(["send", str(issue_file)]) == 0
    assert smtp.recorder.received() == {"ok@example.org": 1}
    rows = ledger_rows(Path(env["MAILER_STATE_DIR"]), ISSUE)
    assert rows["ok@example.org"]["status"] == "sent"
    skipped = [r for r in rows.values() if r["status"] == "skipped"]
    assert {(r["row"], r["reason"].split(":")[0]) for r in skipped} == {
        (3, "invalid address"), (4, "status is 'unsubscribed'"),
    }


def test_duplicates_are_sent_once_whatever_their_case(env, smtp, issue_file, tmp_path):
    write_csv(
        tmp_path / "subscribers.csv",
        "email,name\nAnn@Example.org,Ann\nann@example.org,Ann again\nANN@EXAMPLE.ORG,\nbob@example.org,Bob\n",
    )
    assert main(["send", str(issue_file)]) == 0
    got = smtp.recorder.received()
    assert sum(n for a, n in got.items() if a.lower() == "ann@example.org") == 1
    assert sum(got.values()) == 2


def test_a_duplicate_marked_unsubscribed_wins_whatever_the_row_order(env, smtp, issue_file, tmp_path):
    # The same person twice, once unsubscribed: respecting the unsubscribe must not depend on
    # which of the two rows comes first.
    write_csv(
        tmp_path / "subscribers.csv",
        "email,status\n"
        "ann@example.org,unsubscribed\nAnn@example.org,active\n"
        "bob@example.org,active\nBOB@example.org,unsubscribed\n"
        "cat@example.org,active\n",
    )
    assert main(["send", str(issue_file)]) == 0
    assert smtp.recorder.received() == {"cat@example.org": 1}
    rows = ledger_rows(Path(env["MAILER_STATE_DIR"]), ISSUE)
    assert rows["ann@example.org"]["status"] == rows["bob@example.org"]["status"] == "skipped"


# -- a list that cannot be read: exit 2, nothing sent ------------------------------------


def _refused(issue_file: Path, csv: Path, smtp, capsys) -> str:
    code = main(["send", str(issue_file), "--subscribers", str(csv)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert smtp.recorder.messages == []
    assert smtp.recorder.connections == 0
    return err


def test_no_email_column_is_exit_2_before_anything_is_sent(env, smtp, issue_file, tmp_path, capsys):
    csv = write_csv(tmp_path / "list.csv", "mail,name\nann@example.org,Ann\n")
    assert "no 'email' column" in _refused(issue_file, csv, smtp, capsys)


def test_missing_file_is_exit_2(env, smtp, issue_file, tmp_path, capsys):
    assert "cannot read" in _refused(issue_file, tmp_path / "nowhere.csv", smtp, capsys)


def test_unreadable_file_is_exit_2(env, smtp, issue_file, tmp_path, capsys):
    folder = tmp_path / "a-folder.csv"
    folder.mkdir()
    assert "cannot read" in _refused(issue_file, folder, smtp, capsys)


def test_empty_file_is_exit_2(env, smtp, issue_file, tmp_path, capsys):
    csv = write_csv(tmp_path / "list.csv", "")
    assert "empty" in _refused(issue_file, csv, smtp, capsys)


def test_non_utf8_anywhere_in_the_file_is_exit_2_before_anything_is_sent(
    env, smtp, issue_file, tmp_path, capsys
):
    # The bad byte sits far past the first read buffer: the whole list is planned before a
    # single message goes out, so even a late bad row stops the run with nothing sent.
    lines = ["email,name"] + [f"reader{n}@example.org,Reader {n}" for n in range(2000)]
    lines.append("zoe@example.org,Zo\xeb")
    csv = tmp_path / "list.csv"
    csv.write_bytes("\n".join(lines).encode("latin-1"))
    err = _refused(issue_file, csv, smtp, capsys)
    assert "not UTF-8" in err
    assert "row 2002" in err
    state = Path(env["MAILER_STATE_DIR"]) / "ledger.sqlite3"
    assert not state.exists() or ledger_rows(state.parent, ISSUE) == {}


# -- header injection ----------------------------------------------------------------------


def test_cr_lf_in_a_name_or_address_never_reaches_a_header_raw(env, smtp, issue_file, tmp_path):
    write_csv(
        tmp_path / "subscribers.csv",
        "email,name\n"
        '"eve@example.org","Eve\r\nBcc: victim@example.org\r\nX-Injected: yes"\n'
        '"mallory@example.org\r\nBcc: victim@example.org","Mallory"\n'
        '"sep@example.org","Line\u2028Bcc: victim@example.org"\n'
        '"nul@example.org","Nul\x00Byte\rX-Injected: yes"\n'
        '"comma@example.org","Doe, Jane <other@example.org>"\n'
        '"utf@example.org","Zoë\nBcc: victim@example.org"\n',
    )
    assert main(["send", str(issue_file)]) == 0
    recorder = smtp.recorder
    assert "victim@example.org" not in recorder.received()
    assert sorted(recorder.received()) == [
        "comma@example.org", "eve@example.org", "nul@example.org", "sep@example.org", "utf@example.org",
    ]
    for _sender, rcpts, raw in recorder.messages:
        head = raw.split(b"\r\n\r\n", 1)[0]
        for line in head.split(b"\r\n"):
            # A header line or a folded continuation, never a bare CR/LF splitting one.
            assert b"\r" not in line and b"\n" not in line
            assert not line.lower().startswith((b"bcc:", b"cc:", b"x-injected:"))
        msg = message_from_bytes(raw, policy=policy.default)
        assert msg["Bcc"] is None and msg["Cc"] is None and msg["X-Injected"] is None
        [to] = msg["To"].addresses
        assert isinstance(to, Address)
        assert [to.addr_spec] == rcpts
        assert "\n" not in to.display_name and "\r" not in to.display_name
    names = {m["To"].addresses[0].addr_spec: m["To"].addresses[0].display_name for m in recorder.parsed()}
    assert names["comma@example.org"] == "Doe, Jane <other@example.org>"
    assert names["utf@example.org"].startswith("Zoë")


# -- streamed ------------------------------------------------------------------------------


def test_the_list_is_read_lazily_one_row_at_a_time(tmp_path):
    path = tmp_path / "large.csv"
    count = 20_000  # about 600 KB, far beyond any read buffer
    with path.open("w", encoding="utf-8") as handle:
        handle.write("email,name\n")
        for n in range(count):
            handle.write(f"reader{n}@example.org,Reader {n}\n")
    rows = read_subscribers(path)
    assert inspect.isgenerator(rows)
    first = next(rows)
    assert first == Recipient(2, "reader0@example.org", "Reader 0")
    # Rows appended after the first one was read are still seen: the reader had not read
    # the file through (an eager reader, loading the list into memory, would miss them).
    with path.open("a", encoding="utf-8") as handle:
        handle.write("late@example.org,Late\n")
    rest = list(rows)
    assert len(rest) == count
    assert rest[-1] == Recipient(count + 2, "late@example.org", "Late")


def test_a_bad_header_is_refused_when_the_list_is_opened(tmp_path):
    # The header is checked at once, before any row is wanted, so a send fails early.
    with pytest.raises(SubscribersError):
        read_subscribers(write_csv(tmp_path / "list.csv", "name\nAnn\n"))


# -- broken quoting: the whole list refused, never folded ----------------------------------


BROKEN_QUOTING = {
    # a stray opening quote with no closing one: every later row would join Cy's name
    "unterminated": ('email,name\nann@example.org,Ann\ncy@example.org,"Cy Smith\n'
                     "dee@example.org,Dee\neve@example.org,Eve\n", 3),
    # closed by a stray quote further down: the rows between would be folded into one name
    "closed-later": ('email,name\nann@example.org,Ann\ncy@example.org,"Cy Smith\n'
                     'dee@example.org,Dee\neve@example.org,Eve"\nfay@example.org,Fay\n', 3),
    "quote-in-unquoted": ('email,name\nann@example.org,Ann\ncy@example.org,Cy "Smith" x\n'
                          "dee@example.org,Dee\n", 3),
    "text-after-closing-quote": ('email,name\nann@example.org,Ann\ndee@example.org,Dee\n'
                                 'cy@example.org,"Cy" Smith\n', 4),
    "unterminated-in-header": ('email,"name\nann@example.org,Ann\n', 1),
}


@pytest.mark.parametrize("case", sorted(BROKEN_QUOTING))
def test_broken_quoting_refuses_the_whole_list_naming_the_row(case, tmp_path):
    text, row = BROKEN_QUOTING[case]
    path = write_csv(tmp_path / "list.csv", text)
    with pytest.raises(SubscribersError) as caught:
        rows_of(path)
    message = str(caught.value)
    assert f"row {row}" in message and "not valid CSV" in message
    assert "\n" not in message


@pytest.mark.parametrize("command", [["--dry-run"], []])
def test_an_unterminated_quote_sends_nothing_and_shows_no_one_the_others(
    command, env, smtp, issue_file, tmp_path, capsys
):
    text, _row = BROKEN_QUOTING["closed-later"]
    csv = write_csv(tmp_path / "list.csv", text)
    code = main(["send", str(issue_file), "--subscribers", str(csv), *command])
    out, err = capsys.readouterr()
    assert code == 2
    assert "row 3" in err and "list.csv" in err
    assert "dee@example.org" not in out + err  # nobody's address in the others' plan or error
    assert smtp.recorder.messages == [] and smtp.recorder.connections == 0
    state = Path(env["MAILER_STATE_DIR"])
    assert not (state / "ledger.sqlite3").exists() or ledger_rows(state, ISSUE) == {}


def test_a_quoted_name_with_a_line_break_is_still_one_subscriber(tmp_path):
    path = write_csv(tmp_path / "list.csv",
                     'email,name,notes\nann@example.org,"Ann\nSmith","met at the fair,\n2024"\n'
                     '"b@example.org","Bob ""The Builder"""\n')
    assert rows_of(path) == [Recipient(2, "ann@example.org", "Ann Smith"),
                             Recipient(3, "b@example.org", 'Bob "The Builder"')]


def test_a_file_with_cr_line_ends_only_is_read(tmp_path):
    # Excel for the Mac of old wrote CR alone at the end of each line.
    path = tmp_path / "list.csv"
    path.write_bytes(b'email,name\rann@example.org,Ann\rbob@example.org,"Bob\rBrown"\rcy@example.org,Cy\r')
    assert rows_of(path) == [Recipient(2, "ann@example.org", "Ann"),
                             Recipient(3, "bob@example.org", "Bob Brown"),
                             Recipient(4, "cy@example.org", "Cy")]


@pytest.mark.parametrize(("separator", "word"), [(";", "semicolon"), ("\t", "tab")])
def test_a_list_separated_otherwise_says_so(separator, word, tmp_path):
    path = write_csv(tmp_path / "list.csv", f"email{separator}name\nann@example.org{separator}Ann\n")
    with pytest.raises(SubscribersError, match=f"{word}-separated"):
        rows_of(path)


def _clean_name_in_full(raw: str) -> str:
    """What clean_name does to any name, without its shortcut for names with nothing to clean."""
    return " ".join(re.sub(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+", " ", raw).split())[:200]


@settings(max_examples=400, deadline=None)
@given(st.text(st.characters(exclude_categories=("Cs",)), max_size=220)
       | st.text(st.sampled_from(" a\t\r\n\x85\xa0\u2028\u3000\u200b\x00\x7f"), max_size=12))
def test_the_shortcut_for_a_clean_name_changes_nothing(raw):
    """A printable name with single spaces inside is taken as it is (most rows): the result must
    be the one the full cleaning gives, whatever the name holds."""
    assert clean_name(raw) == _clean_name_in_full(raw)
    assert clean_name(" " + raw) == _clean_name_in_full(" " + raw)
    assert clean_name(raw + "  x") == _clean_name_in_full(raw + "  x")
