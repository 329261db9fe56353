"""The package as an operator installs it: a wheel in a fresh virtual environment, run from a
directory that has no templates/, no issues/ and no .env of its own."""

from __future__ import annotations

import email
import email.policy
import os
import shutil
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_ISSUE = ROOT / "issues" / "2026-11-24.json"
SUBSCRIBERS = ROOT / "subscribers.csv.example"
ENV_EXAMPLE = ROOT / ".env.example"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=600,
    )
    (found,) = out.glob("topten_mailer-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel and its dependencies; returns its bin/."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        check=True, capture_output=True, timeout=600,
    )
    return venv / "bin"


def run(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [str(bin_dir / "mailer"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )


def test_the_wheel_holds_every_template_and_stylesheet(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.relative_to(ROOT / "templates").as_posix() for p in (ROOT / "templates").rglob("*")
               if p.suffix in (".j2", ".css")}
    assert {"email.html.j2", "email.txt.j2", "email.css"} <= shipped
    for name in shipped:
        assert f"mailer/templates/{name}" in names


def test_the_installed_wheel_runs_from_an_empty_directory(installed, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    where = subprocess.run(
        [str(installed / "python"), "-c", "import mailer, sys; print(mailer.__file__)"],
        cwd=empty, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(installed.parent), where  # the wheel's copy, not the checkout

    done = run(installed, empty, "validate", str(EXAMPLE_ISSUE))
    assert done.returncode == 0, done.stderr
    assert "valid: 2026-11-24, 10 stories" in done.stdout

    done = run(installed, empty, "preview", str(EXAMPLE_ISSUE), "--out", "look")
    assert done.returncode == 0, done.stderr
    html = (empty / "look" / "2026-11-24.html").read_text(encoding="utf-8")
    assert "Ten stories" in html and "style=" in html  # rendered, with the CSS inlined

    args = ("--env-file", str(ENV_EXAMPLE), "--subscribers", str(SUBSCRIBERS))
    done = run(installed, empty, "send", str(EXAMPLE_ISSUE), "--dry-run", *args)
    assert done.returncode == 0, done.stderr
    assert "dry run of 2026-11-24: 5 to send" in done.stdout

    done = run(installed, empty, "send", str(EXAMPLE_ISSUE), "--outbox", "outbox", *args)
    assert done.returncode == 0, done.stderr
    emls = sorted((empty / "outbox").glob("*.eml"))
    assert len(emls) == 5
    message = email.message_from_bytes(emls[0].read_bytes(), policy=email.policy.default)
    assert message["Subject"].startswith("Ten stories for Tuesday, November 24")
    assert not (empty / "templates").exists() and not (empty / "state").exists()


def test_mailer_templates_dir_wins_over_the_installed_templates(installed, tmp_path):
    own = tmp_path / "look"
    own.mkdir()
    for name in ("email.html.j2", "email.txt.j2", "email.css"):
        text = (ROOT / "templates" / name).read_text(encoding="utf-8")
        if name == "email.txt.j2":
            text = "OUR OWN TEXT TEMPLATE\n" + text
        (own / name).write_text(text, encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    (work / ".env").write_text(f"MAILER_TEMPLATES_DIR={own}\n", encoding="utf-8")
    done = run(installed, work, "preview", str(EXAMPLE_ISSUE))
    assert done.returncode == 0, done.stderr
    assert (work / "preview" / "2026-11-24.txt").read_text(encoding="utf-8").startswith("OUR OWN TEXT")

    (work / ".env").write_text(f"MAILER_TEMPLATES_DIR={tmp_path / 'missing'}\n", encoding="utf-8")
    done = run(installed, work, "preview", str(EXAMPLE_ISSUE))
    assert done.returncode == 2
    missing = tmp_path / "missing"
    assert done.stderr.strip() == f"mailer preview: MAILER_TEMPLATES_DIR: no such folder: {missing}"


def test_a_templates_folder_in_the_working_directory_wins_over_the_installed_one(installed, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(ROOT / "templates", work / "templates")
    text = work / "templates" / "email.txt.j2"
    text.write_text("OUR FOLDER'S TEXT\n" + text.read_text(encoding="utf-8"), encoding="utf-8")
    done = run(installed, work, "preview", str(EXAMPLE_ISSUE))
    assert done.returncode == 0, done.stderr
    assert (work / "preview" / "2026-11-24.txt").read_text(encoding="utf-8").startswith("OUR FOLDER'S TEXT")


def test_the_editable_install_finds_the_same_defaults(tmp_path, monkeypatch):
    """The environment the tests run in is `pip install -e .`: its installed templates are
    the project's own folder, found from any directory."""
    from mailer.render import templates_dir

    monkeypatch.chdir(tmp_path)
    assert templates_dir().resolve() == (ROOT / "templates").resolve()


def test_the_installed_wheel_serves_the_unsubscribe_page(installed, tmp_path):
    """waitress and the form parser come with the wheel, and so does the page's template."""
    empty = tmp_path / "serve"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.pop("PYTHONPATH", None)
    env.update({"MAILER_SECRET": "wheel-secret-0123456789",
                "MAILER_UNSUBSCRIBE_URL": "https://example.org/u/{token}"})
    process = subprocess.Popen([str(installed / "mailer"), "serve", "--port", "0"], cwd=empty, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        address = process.stdout.readline().strip().removeprefix("listening on ")
        assert address.startswith("http://127.0.0.1:"), process.stderr.read() if process.stderr else ""
        from mailer.tokens import make_token

        token = make_token("wheel-secret-0123456789", "a@example.org")
        with urllib.request.urlopen(f"{address}/u/{token}", timeout=30) as page:
            assert page.status == 200 and "a@example.org" in page.read().decode()
        request = urllib.request.Request(f"{address}/u/{token}", data=b"List-Unsubscribe=One-Click")
        with urllib.request.urlopen(request, timeout=30) as page:
            assert "You are unsubscribed" in page.read().decode()
    finally:
        process.terminate()
        assert process.wait(30) == 0
