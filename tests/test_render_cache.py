"""The rendered issue kept in the state directory: used by the next run when nothing it was made
from changed, never when the issue, a template, a setting the templates see or the entry itself
did; and never a reason for a send to fail."""

from __future__ import annotations

import email
import email.policy
import json
import shutil
from email.message import EmailMessage
from pathlib import Path

import pytest
from conftest import ROOT, write_subscribers

import mailer.render
import mailer.send
from mailer.cli import main
from mailer.config import load_settings
from mailer.message import MessageFactory
from mailer.render import render_issue
from mailer.send import keep_rendered, prepare
from mailer.subscribers import Recipient

ISSUE = "2026-11-24"


@pytest.fixture
def state(env) -> Path:
    return Path(env["MAILER_STATE_DIR"])


@pytest.fixture
def entry(state) -> Path:
    return state / "rendered" / f"{ISSUE}.json"


def renders(run) -> int:
    """How many times `run()` rendered (premailer is run once per rendering)."""
    before = mailer.render.inline_runs
    run()
    return mailer.render.inline_runs - before


def parts(raw: bytes) -> tuple[str, str]:
    message: EmailMessage = email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[assignment]
    html = message.get_body(("html",))
    text = message.get_body(("plain",))
    assert html is not None and text is not None
    return html.get_content(), text.get_content()


def send_to(tmp_path: Path, count: int) -> int:
    write_subscribers(tmp_path / "subscribers.csv", count)
    return main(["send", ISSUE])


def test_a_rerun_uses_the_rendering_kept_and_sends_exactly_what_rendering_gives(
    env, smtp, issue_file, tmp_path, entry
):
    assert renders(lambda: send_to(tmp_path, 2)) == 1
    assert entry.is_file()
    # A resumed run (the list has grown by one): no rendering, and the new subscriber's message
    # is the one a fresh rendering would have built.
    smtp.recorder.messages.clear()
    assert renders(lambda: send_to(tmp_path, 3)) == 0
    [(_, recipients, raw)] = smtp.recorder.messages
    assert recipients == ["reader2@example.org"]
    settings = load_settings()
    fresh = MessageFactory(render_issue(prepare(issue_file, settings).issue, settings), settings)
    assert parts(raw) == parts(fresh.build(Recipient(4, "reader2@example.org", "Reader 2")))


def test_a_dry_run_reads_the_rendering_kept_but_writes_none(env, issue_file, tmp_path, state):
    write_subscribers(tmp_path / "subscribers.csv", 2)
    assert renders(lambda: main(["send", ISSUE, "--dry-run"])) == 1
    assert not state.exists()
    state.mkdir()
    settings = load_settings()
    keep_rendered(prepare(issue_file, settings, state), state)
    assert renders(lambda: main(["send", ISSUE, "--dry-run"])) == 0


def changed_issue(issue_file: Path, tmp_path: Path) -> None:
    data = json.loads(issue_file.read_text(encoding="utf-8"))
    data["stories"][4]["headline"] = "A changed headline"
    issue_file.write_text(json.dumps(data), encoding="utf-8")


def changed_template(issue_file: Path, tmp_path: Path) -> None:
    # the templates in the working directory are the ones used; the links' colour changed
    css = tmp_path / "templates" / "email.css"
    css.write_text(css.read_text(encoding="utf-8").replace("a { color: #1a4f8b; }", "a { color: #1a4f8c; }"),
                   encoding="utf-8")


FROM = "MAILER_FROM=The Top Ten <news@example.org>\n"


def changed_donate_url(issue_file: Path, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(FROM + "MAILER_DONATE_URL=https://example.org/give\n", encoding="utf-8")


def changed_list_name(issue_file: Path, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(FROM.replace("Top", "Other"), encoding="utf-8")


@pytest.mark.parametrize("change", [changed_issue, changed_template, changed_donate_url, changed_list_name],
                         ids=lambda f: f.__name__)
def test_a_change_to_what_the_rendering_reads_renders_again(env, issue_file, tmp_path, state, monkeypatch,
                                                            change):
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    monkeypatch.delenv("MAILER_FROM")  # the .env file may set it below; the environment would win
    (tmp_path / ".env").write_text(FROM, encoding="utf-8")
    state.mkdir()
    first = prepare(issue_file, load_settings(), state)
    keep_rendered(first, state)
    assert prepare(issue_file, load_settings(), state).from_cache

    change(issue_file, tmp_path)
    settings = load_settings()
    again = prepare(issue_file, settings, state)
    assert not again.from_cache
    assert again.rendered.html.parts != first.rendered.html.parts
    assert again.rendered == render_issue(again.issue, settings)
    # ... and that rendering replaces the one kept
    keep_rendered(again, state)
    assert prepare(issue_file, settings, state).rendered == again.rendered


def truncated(text: str) -> str:
    return text[: len(text) // 2]


def not_json(text: str) -> str:
    return "\x00\x01garbage"


def nested_too_deep(text: str) -> str:
    return "[" * 100_000


def body_changed(text: str) -> str:
    """A character of the body changed, the key and checksum as they were."""
    return text.replace("Ten stories", "Ten storied", 1)


def slot_renamed(text: str) -> str:
    """A slot that does not exist, with the checksum made to match: still refused."""
    from mailer.render_cache import _checksum

    entry = json.loads(text)
    entry["html"][1] = "password"
    entry["checksum"] = _checksum(entry["html"], entry["text"])
    return json.dumps(entry)


def not_a_list(text: str) -> str:
    from mailer.render_cache import _checksum

    entry = json.loads(text)
    entry["text"] = "Good morning"
    entry["checksum"] = _checksum(entry["html"], entry["text"])
    return json.dumps(entry)


@pytest.mark.parametrize("damage",
                         [truncated, not_json, nested_too_deep, body_changed, slot_renamed, not_a_list],
                         ids=lambda f: f.__name__)
def test_a_damaged_entry_is_ignored_rendered_again_and_replaced(env, smtp, issue_file, tmp_path, entry,
                                                                damage):
    assert send_to(tmp_path, 1) == 0
    kept = entry.read_text(encoding="utf-8")
    entry.write_text(damage(kept), encoding="utf-8")

    smtp.recorder.messages.clear()
    assert renders(lambda: send_to(tmp_path, 2)) == 1  # rendered again, and the send went on
    [(_, recipients, raw)] = smtp.recorder.messages
    assert recipients == ["reader1@example.org"]
    assert "Ten stories" in parts(raw)[0]
    assert "Ten storied" not in parts(raw)[0]
    assert json.loads(entry.read_text(encoding="utf-8")) == json.loads(kept)  # the good one is back
    assert renders(lambda: send_to(tmp_path, 3)) == 0


def test_an_entry_that_cannot_be_written_does_not_stop_the_send(env, smtp, issue_file, tmp_path, state,
                                                                capsys):
    state.mkdir()
    (state / "rendered").write_text("a file where the folder should be", encoding="utf-8")
    assert send_to(tmp_path, 2) == 0
    assert len(smtp.recorder.messages) == 2
    assert "could not keep the rendered issue" in capsys.readouterr().err
    assert renders(lambda: send_to(tmp_path, 3)) == 1  # nothing was kept: rendered again


def test_a_replay_keeps_the_rendering_too(env, smtp, issue_file, tmp_path, entry):
    smtp.recorder.scripts = {"reader1@example.org": ["550"]}
    assert send_to(tmp_path, 2) == 1
    entry.unlink()
    assert renders(lambda: main(["replay", ISSUE, "--permanent"])) == 1
    assert entry.is_file()
    assert renders(lambda: main(["replay", ISSUE, "--permanent"])) == 0



def test_a_template_changed_while_rendering_is_not_kept(env, issue_file, tmp_path, state, monkeypatch):
    """What was rendered may be from the old or the new template: it is sent, not kept."""
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    real_render = mailer.send.render_issue

    def render_then_edit(*args, **kwargs):
        rendered = real_render(*args, **kwargs)
        with (tmp_path / "templates" / "email.txt.j2").open("a", encoding="utf-8") as template:
            template.write("P.S.\n")
        return rendered

    monkeypatch.setattr(mailer.send, "render_issue", render_then_edit)
    state.mkdir()
    prepared = prepare(issue_file, load_settings(), state)
    assert prepared.render_key is None
    keep_rendered(prepared, state)
    assert not (state / "rendered").exists()


def test_only_the_latest_issues_renderings_are_kept(env, issue_file, state):
    folder = state / "rendered"
    folder.mkdir(parents=True)
    older = [folder / f"2026-10-{day:02}.json" for day in range(1, 21)]  # twenty earlier issues
    for path in older:
        path.write_text("{}", encoding="utf-8")
    (folder / "notes.txt").write_text("not an entry", encoding="utf-8")
    keep_rendered(prepare(issue_file, load_settings(), state), state)
    kept = sorted(p.name for p in folder.iterdir())
    assert kept == [p.name for p in older[-13:]] + [f"{ISSUE}.json", "notes.txt"]


def test_the_editors_test_copy_leaves_the_rendering_for_the_run_that_follows(
    env, smtp, issue_file, tmp_path, state, entry
):
    """A `--to` copy renders the issue; kept in the state directory, the morning run after it
    starts without rendering. A test send makes no state directory of its own."""
    assert main(["send", ISSUE, "--to", "editor@example.org"]) == 0
    assert not state.exists()  # nothing made where there was nothing
    state.mkdir()
    assert renders(lambda: main(["send", ISSUE, "--to", "editor@example.org"])) == 1
    assert entry.is_file()
    smtp.recorder.messages.clear()
    assert renders(lambda: send_to(tmp_path, 2)) == 0
    assert sorted(r for _, [r], _ in smtp.recorder.messages) == ["reader0@example.org", "reader1@example.org"]
    [(_, _, raw)] = [m for m in smtp.recorder.messages if m[1] == ["reader0@example.org"]]
    assert not email.message_from_bytes(raw)["Subject"].startswith("[TEST]")
