"""The `mailer` command: arguments, output and exit codes over the library.

Only this module prints or chooses an exit code; the library raises.

Each command imports what it needs when it runs: `mailer --help`, `config` and `report` must
answer at once, without loading premailer, email-validator or the SMTP code.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from mailer import __version__, set_aside
from mailer.errors import InputError, IssueInvalid, MailerError, storage_error

if TYPE_CHECKING:
    from mailer.config import Settings
    from mailer.send import Outcome, Prepared

log = logging.getLogger("mailer")

EXIT_OK, EXIT_FAILURES, EXIT_INPUT, EXIT_TRY_LATER = 0, 1, 2, 75
PREVIEW_DEFAULTS = {
    "from_": "The Top Ten <news@example.org>",
    "secret": "preview-only-secret",
    "unsubscribe_url": "https://example.org/unsubscribe/{token}",
}


class _IssueTag(logging.Filter):
    """Puts the issue date on every log line."""

    issue = "-"

    def filter(self, record: logging.LogRecord) -> bool:
        record.issue = self.issue
        return True


_tag = _IssueTag()


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s [%(issue)s] %(message)s", "%Y-%m-%d %H:%M:%S")
    )
    handler.addFilter(_tag)
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


# -- commands ----------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace, settings: Settings) -> int:
    """Check an issue file against every rule; list each problem as FILE: path: message.

    Example: mailer validate issues/2026-11-24.json
    """
    from mailer.send import prepare

    path = _issue_path(args, settings)
    prepared = prepare(path, settings)  # rendered too: the warnings include the HTML's size
    issue = prepared.issue
    _out(f"{path}: valid: {issue.date}, {len(issue.stories)} stories, subject {issue.subject!r}")
    _print_warnings(prepared)
    return EXIT_OK


def cmd_preview(args: argparse.Namespace, settings: Settings) -> int:
    """Write exactly what one subscriber would receive: DIR/<date>.html, .txt and .eml.

    Example: mailer preview today --as ann@example.org --open
    """
    import email
    import email.policy
    import webbrowser

    from mailer.message import MessageFactory
    from mailer.send import prepare
    from mailer.subscribers import Recipient, check_address, clean_name

    missing = {k: v for k, v in PREVIEW_DEFAULTS.items() if getattr(settings, k) is None}
    settings = settings.model_copy(update=missing)
    prepared = prepare(_issue_path(args, settings), settings)
    try:
        address = check_address(args.as_)
    except ValueError as exc:
        raise InputError(f"--as {args.as_}: {exc}") from None
    recipient = Recipient(0, address, clean_name(args.name))
    raw = MessageFactory(prepared.rendered, settings).build(recipient)
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    out: Path = args.out
    files = {}
    for part in parsed.walk():
        if part.get_content_type() in ("text/html", "text/plain"):
            suffix = "html" if part.get_content_subtype() == "html" else "txt"
            files[suffix] = part.get_content()
    paths = [out / f"{prepared.key}.{suffix}" for suffix in ("html", "txt", "eml")]
    try:
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {out}: a file, not a directory; give a directory for the preview")
        out.mkdir(parents=True, exist_ok=True)
        paths[0].write_text(files["html"], encoding="utf-8")
        paths[1].write_text(files["txt"], encoding="utf-8")
        paths[2].write_bytes(raw)
    except OSError as exc:
        raise storage_error(exc, f"--out {exc.filename or out}") from None
    for path in paths:
        _out(str(path))
    for name in missing:
        _out(f"note: MAILER_{name.rstrip('_').upper()} is not set; the preview uses a placeholder")
    _print_warnings(prepared)
    if args.open and not webbrowser.open(paths[0].resolve().as_uri()):
        _out(f"note: no web browser found to open it; open {paths[0]} yourself")
    return EXIT_OK


def cmd_send(args: argparse.Namespace, settings: Settings) -> int:
    """Deliver the issue to every active subscriber not yet delivered (resumes a stopped run).

    Examples:
      mailer send today                                  the morning run
      mailer send today --dry-run                        the plan, connecting to nothing
      mailer send 2026-11-24 --to me@example.org         a [TEST] copy to yourself
      mailer send today --outbox outbox/                 .eml files instead of SMTP
    """
    from mailer.delivery import Tally
    from mailer.progress import Progress
    from mailer.send import prepare, run_state_dir, test_send
    from mailer.send import send as send_issue
    from mailer.transport import check_smtp_settings

    # the run's state directory keeps the rendered issue: a re-run skips Jinja2 and premailer
    prepared = prepare(_issue_path(args, settings), settings, run_state_dir(settings, args.outbox))
    subscribers: Path = args.subscribers or settings.subscribers
    if args.dry_run and args.to:
        return _print_test_plan(prepared, settings, args.to, args.outbox)
    if args.dry_run:
        return _print_dry_run(prepared, settings, subscribers, args.outbox, args.allow_removals)
    if args.to:
        outcome = _with_signals(
            lambda stop: test_send(prepared, settings, args.to, outbox=args.outbox, stop=stop)
        )
        _summarise(outcome, "test send")
        return outcome.exit_code
    if args.outbox is None:
        check_smtp_settings(settings)  # before the first log line, so a missing host is one line
    target = f"outbox {args.outbox}" if args.outbox else f"{settings.smtp_host}:{settings.port}"
    log.info("sending %s (%s) from %s to %s", prepared.key, prepared.issue.subject, subscribers, target)
    for warning in prepared.warnings:
        log.warning("content: %s", warning)
    tally = Tally()
    set_aside()
    with Progress(tally):
        outcome = _with_signals(
            lambda stop: send_issue(
                prepared, settings, subscribers, outbox=args.outbox, stop=stop, tally=tally,
                allow_removals=args.allow_removals,
            )
        )
    _summarise(outcome, "send")
    return outcome.exit_code


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    """Send again to the recipients whose delivery failed; no one delivered gets it twice.

    Examples:
      mailer replay 2026-11-24                   those that failed after their retries
      mailer replay 2026-11-24 --in-doubt        also those whose outcome is unknown
      mailer replay 2026-11-24 --dry-run         list who would be sent to
    """
    from mailer.delivery import Tally
    from mailer.progress import Progress
    from mailer.send import prepare, replay, replay_candidates

    prepared = prepare(_issue_path(args, settings), settings, settings.state_dir)
    subscribers: Path = args.subscribers or settings.subscribers
    if args.dry_run:
        rows = replay_candidates(settings, prepared.key, subscribers, in_doubt=args.in_doubt,
                                 permanent=args.permanent, allow_removals=args.allow_removals)
        for address, status, last in rows:
            _out(f"would send  {address}  ({status}{': ' + last if last else ''})")
        _out(f"{len(rows)} recipient(s) would be sent to")
        return EXIT_OK
    tally = Tally()
    set_aside()
    with Progress(tally):
        outcome = _with_signals(
            lambda stop: replay(prepared, settings, subscribers, in_doubt=args.in_doubt,
                                permanent=args.permanent, stop=stop, tally=tally,
                                allow_removals=args.allow_removals)
        )
    log.info("replay: %d recipient(s) made pending again", outcome.replayed)
    _summarise(outcome, "replay")
    return outcome.exit_code


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    """Who got the issue, who did not and why: counts, runs, failures, then skipped and suppressed.

    Examples:
      mailer report 2026-11-24
      mailer report today --json
      mailer report today --csv > 2026-11-24.csv
    """
    from mailer import report
    from mailer.ledger import open_ledger

    key = _issue_key(args, settings)
    ledger = open_ledger(settings.state_dir, key, read_only=True)
    try:
        with ledger.guard():
            if args.csv:
                report.write_csv(ledger, key, sys.stdout)
                return EXIT_OK
            found = report.gather(ledger, key)
    finally:
        ledger.close()
    if args.json:
        _out(json.dumps(found.as_json(), indent=2))
    else:
        for line in found.lines():
            _out(line)
    return EXIT_OK


def cmd_unsubscribe(args: argparse.Namespace, settings: Settings) -> int:
    """Add an address to the suppression list, or the one an unsubscribe token carries.

    Examples:
      mailer unsubscribe ann@example.org
      mailer unsubscribe --token 'YW5uQGV4YW1wbGUub3Jn.Qm9ndXM'
    """
    from mailer.ledger import Ledger
    from mailer.subscribers import check_address
    from mailer.tokens import read_token

    if bool(args.address) == bool(args.token):
        raise InputError("give either an ADDRESS or --token TOKEN")
    if args.token:
        settings.require("secret")
        address = read_token(settings.secret or "", args.token)
        how = "token"
    else:
        try:
            address = check_address(args.address)
        except ValueError as exc:  # a typo must not look like a done unsubscribe
            raise InputError(f"{args.address}: {exc}; nothing was changed") from None
        how = "command line"
    ledger = Ledger.in_dir(settings.state_dir)
    try:
        with ledger.guard():
            added = ledger.suppress(address, "unsubscribed", f"by {how}")
    finally:
        ledger.close()
    _out(f"{address}: {'unsubscribed' if added else 'already on the suppression list'}")
    return EXIT_OK


def cmd_suppressed(args: argparse.Namespace, settings: Settings) -> int:
    """List the suppression list: address, reason and date.

    Example: mailer suppressed
    """
    from mailer.ledger import FILE_NAME, Ledger

    rows = []
    if (settings.state_dir / FILE_NAME).is_file():  # else nothing was ever suppressed here
        ledger = Ledger(settings.state_dir / FILE_NAME, read_only=True)
        try:
            with ledger.guard():
                rows = ledger.suppressed()
        finally:
            ledger.close()
    for address, reason, detail, created in rows:
        _out(f"{address}\t{reason}\t{created}\t{detail}")
    _out(f"{len(rows)} suppressed address(es)")
    return EXIT_OK


def cmd_unsuppress(args: argparse.Namespace, settings: Settings) -> int:
    """Lift one address from the suppression list, so later issues go to it again.

    Example: mailer unsuppress ann@example.org
    """
    from mailer.ledger import FILE_NAME, Ledger
    from mailer.subscribers import check_address

    try:  # as `unsubscribe` stored it: an IDN domain in punycode
        address = check_address(args.address)
    except ValueError:
        address = args.address  # an entry no longer valid may still be lifted as written
    path = settings.state_dir / FILE_NAME
    if not path.is_file():
        raise InputError(f"{path}: no ledger here, so no suppression list; nothing was changed")
    ledger = Ledger(path)
    try:
        with ledger.guard():
            lifted = ledger.unsuppress(address) or ledger.unsuppress(args.address)
    finally:
        ledger.close()
    if not lifted:
        raise InputError(f"{args.address}: not on the suppression list")
    _out(f"{args.address}: lifted from the suppression list")
    return EXIT_OK


def cmd_inbox(args: argparse.Namespace, settings: Settings) -> int:
    """Read what comes back: bounces, complaints and mailed unsubscribes, and act on them.

    Each SOURCE is a Maildir folder, an mbox file, one message file, or - (one message on
    standard input, for an MTA's pipe); with none, the IMAP mailbox in MAILER_INBOX_*.
    Examples:
      mailer inbox                        the IMAP mailbox (cron, every 15 minutes)
      mailer inbox ~/Maildir/.bounces     a local Maildir
      mailer inbox --dry-run bounce.eml   what it would do, changing nothing
    """
    from mailer.inbox import Inbox, Summary
    from mailer.ledger import open_ledger
    from mailer.mailboxes import Imap, Source, open_source

    sources: list[Source] = [open_source(s) for s in args.sources] if args.sources else [Imap(settings)]
    # An existing ledger only: run from the wrong folder, a fresh one would know no address,
    # and every bounce would be read, found about no one, and moved away unheeded.
    ledger = open_ledger(settings.state_dir, read_only=args.dry_run)
    results = []
    try:
        for result in Inbox(ledger, settings, dry_run=args.dry_run).read(sources):
            results.append(result)
            if not args.json:
                _out(result.line())
    finally:
        ledger.close()
    summary = Summary(results)
    if args.json:
        _out(json.dumps(summary.as_json(), indent=2))
    else:
        _out(summary.line() + ("; dry run, nothing was changed" if args.dry_run else ""))
    return EXIT_OK


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    """Print the settings in effect, secrets masked.

    Example: mailer config --env-file /etc/topten/mailer.env
    """
    for name, value in settings.masked().items():
        _out(f"{name}={value}")
    for problem in settings.real_send_problems():
        _out(f"note: {problem}")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Answer the unsubscribe link of every message: a page on GET, an unsubscribe on POST.

    Serves mailer.web:app with waitress on HOST:PORT (default $MAILER_SERVE_HOST and
    $MAILER_SERVE_PORT, 127.0.0.1:8080), behind the site's HTTPS proxy. Prints the address it
    listens on, then serves until SIGTERM or Ctrl-C (exit 0).

    Example: mailer serve --port 8080
    """
    from mailer import web  # waitress and the form parser: only this command needs them

    host = settings.serve_host if args.host is None else args.host.strip("[]")
    port = settings.serve_port if args.port is None else args.port
    if not 0 <= port <= 65535:
        raise InputError(f"--port {port}: must be 0 to 65535 (0: any free port)")
    app = web.UnsubscribeApp(settings)
    try:
        server = web.make_server(app, host, port)

        def stop(signum: int, frame: object) -> None:
            raise SystemExit(0)  # waitress's loop ends on it and lets the requests in hand finish

        previous = signal.signal(signal.SIGTERM, stop)
        try:
            for url in web.listening(server):
                _out(f"listening on {url}")
            sys.stdout.flush()
            log.info("serving the unsubscribe endpoint on %s", ", ".join(web.listening(server)))
            server.run()
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
            server.close()
    finally:
        app.close()
    log.info("the unsubscribe endpoint stopped")
    return EXIT_OK


# -- helpers -----------------------------------------------------------------------------


def _issue_path(args: argparse.Namespace, settings: Settings) -> Path:
    from mailer.issue import resolve_issue_path

    path = resolve_issue_path(args.issue, settings.issues_dir)
    _tag.issue = path.stem
    return path


def _issue_key(args: argparse.Namespace, settings: Settings) -> str:
    """The date of an issue for the ledger; the file need not exist any more."""
    from mailer.issue import load_issue

    path = _issue_path(args, settings)
    if path.stem and len(path.stem) == 10 and path.stem[4] == "-":
        return path.stem
    return load_issue(path).date.isoformat()


def _print_warnings(prepared: Prepared) -> None:
    for warning in prepared.warnings:
        _out(f"warning: {warning}")


def _print_dry_run(
    prepared: Prepared, settings: Settings, subscribers: Path, outbox: Path | None, allow_removals: bool
) -> int:
    from mailer.send import dry_run

    with dry_run(prepared, settings, subscribers, outbox=outbox, allow_removals=allow_removals) as plan:
        write = sys.stdout.write
        for r in plan.recipients:
            write(f"send  {r.email}{'  (' + r.name + ')' if r.name else ''}\n")
        for row, address, status, reason in plan.skipped:
            write(f"skip  row {row}: {address or '(empty)'}: {status}: {reason}\n")
        p = plan.plan
    _out(
        f"dry run of {prepared.key}: {p.pending} to send, {p.skipped} skipped, "
        f"{p.suppressed} suppressed, {p.duplicates} duplicate row(s), "
        f"{p.done_before} already handled by an earlier run"
        + (f", {p.missing} of an earlier plan missing from the list (not sent to)" if p.missing else "")
        + "; nothing was sent"
    )
    _print_warnings(prepared)
    return EXIT_OK


def _print_test_plan(
    prepared: Prepared, settings: Settings, addresses: list[str], outbox: Path | None
) -> int:
    """`send --to X --dry-run`: the test send's plan; the list is not read."""
    from mailer.message import MessageFactory
    from mailer.send import check_outbox, test_recipients

    recipients = test_recipients(addresses)
    check_outbox(settings, outbox)
    MessageFactory(prepared.rendered, settings, test=True)  # the settings a test send needs
    for r in recipients:
        _out(f"send  {r.email}  (a [TEST] copy, not recorded as a delivery)")
    _out(f"dry run of a test send of {prepared.key}: {len(recipients)} to send; nothing was sent")
    _print_warnings(prepared)
    return EXIT_OK


def _with_signals(run: Callable[[threading.Event], Outcome]) -> Outcome:
    """SIGINT/SIGTERM: finish the messages in flight, record them, then stop (exit 75)."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        log.warning("%s: finishing the messages in flight, then stopping", signal.Signals(signum).name)
        stop.set()
        signal.signal(signum, signal.SIG_DFL)  # a second one stops at once

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return run(stop)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _summarise(outcome: Outcome, what: str) -> None:
    """What to do next, if anything, then the summary: the last line of a run's log."""
    from mailer.progress import elapsed

    c, t = outcome.counts, outcome.tally
    if outcome.error is not None and outcome.exit_code == EXIT_INPUT:
        log.error("%s; nothing more was sent (exit 2): fix it, then run the same command", outcome.error)
    elif outcome.error is not None:
        log.error("%s (exit %d); run the same command again to resume", outcome.error, outcome.exit_code)
    elif not outcome.complete and what != "test send":
        log.warning(
            "not everyone has it: see `mailer report %s`, retry with `mailer replay %s`",
            outcome.issue, outcome.issue,
        )
    if what == "test send":  # its counts are of a scratch ledger, not of the issue
        log.info(
            "test send of %s ended in %s: %d sent, %d failed, %d in doubt; not recorded as a delivery",
            outcome.issue, elapsed(t), t.sent, t.failed, t.in_doubt,
        )
        return
    log.info(
        "%s of %s ended in %s at %.1f/s: this run %d sent, %d failed, %d in doubt; the issue now has "
        "%d sent, %d failed, %d in doubt, %d pending, %d suppressed, %d skipped",
        what, outcome.issue, elapsed(t), t.rate, t.sent, t.failed, t.in_doubt,
        c.get("sent", 0), c.get("failed", 0), c.get("in_doubt", 0), c.get("pending", 0),
        c.get("suppressed", 0), c.get("skipped", 0),
    )


# -- the parser --------------------------------------------------------------------------

COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "validate": cmd_validate,
    "preview": cmd_preview,
    "send": cmd_send,
    "replay": cmd_replay,
    "report": cmd_report,
    "unsubscribe": cmd_unsubscribe,
    "suppressed": cmd_suppressed,
    "unsuppress": cmd_unsuppress,
    "inbox": cmd_inbox,
    "config": cmd_config,
    "serve": cmd_serve,
}


def build_parser() -> argparse.ArgumentParser:
    def shared_options(p: argparse.ArgumentParser, default: Any) -> None:
        p.add_argument("--env-file", type=Path, default=default(None), metavar="PATH",
                       help="settings file (default ./.env when present); the environment wins")
        p.add_argument("-v", "--verbose", action="store_true", default=default(False),
                       help="debug output: the settings in effect (secrets masked), each step "
                       "and each message sent")

    # Accepted before the command and after it; after it, an absent option must not undo
    # one given before, hence SUPPRESS as the command's default.
    common = argparse.ArgumentParser(add_help=False)
    shared_options(common, lambda _: argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="mailer",
        description="The Top Ten daily email: validate, preview, send, report and replay.",
        epilog="Exit codes: 0 done, 1 some recipients failed or are in doubt, "
        "2 bad input (nothing sent), 75 try again later (re-running resumes).",
    )
    parser.add_argument("--version", action="version", version=f"mailer {__version__}")
    shared_options(parser, lambda value: value)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str) -> argparse.ArgumentParser:
        func = COMMANDS[name]
        doc = (func.__doc__ or "").strip()
        summary, _, rest = doc.partition("\n")
        return sub.add_parser(
            name, parents=[common], help=summary, description=summary,
            epilog=rest.strip(), formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    issue_help = "an issue file, a date YYYY-MM-DD (in $MAILER_ISSUES_DIR) or 'today'"
    allow_removals_help = (
        "go ahead when the list lacks more than 10%% of the recipients the issue was planned "
        "with (they were removed on purpose); they are not sent to either way"
    )
    p = add("validate")
    p.add_argument("issue", metavar="ISSUE", help=issue_help)
    p = add("preview")
    p.add_argument("issue", metavar="ISSUE", help=issue_help)
    p.add_argument("--out", type=Path, default=Path("preview"), metavar="DIR", help="default: preview/")
    p.add_argument("--as", dest="as_", default="reader@example.org", metavar="EMAIL",
                   help="the subscriber to render for (default a sample one)")
    p.add_argument("--name", default="", help="that subscriber's name, for the greeting")
    p.add_argument("--open", action="store_true", help="open the HTML in the default browser")
    p = add("send")
    p.add_argument("issue", metavar="ISSUE", help=issue_help)
    p.add_argument("--subscribers", type=Path, metavar="CSV",
                   help="default $MAILER_SUBSCRIBERS, else subscribers.csv")
    p.add_argument("--dry-run", action="store_true", help="print the plan; connect to nothing")
    p.add_argument("--to", action="append", metavar="ADDR",
                   help="a [TEST] send to just this address (repeatable), not recorded")
    p.add_argument("--outbox", type=Path, metavar="DIR",
                   help="write .eml files to DIR instead of SMTP, with a ledger of their own")
    p.add_argument("--allow-removals", action="store_true", help=allow_removals_help)
    p = add("replay")
    p.add_argument("issue", metavar="ISSUE", help=issue_help)
    p.add_argument("--subscribers", type=Path, metavar="CSV",
                   help="the list as it is now (default $MAILER_SUBSCRIBERS, else subscribers.csv)")
    p.add_argument("--allow-removals", action="store_true", help=allow_removals_help)
    p.add_argument("--in-doubt", action="store_true", help="also those in doubt")
    p.add_argument("--permanent", action="store_true", help="also those refused permanently")
    p.add_argument("--dry-run", action="store_true", help="list who would be sent to")
    p = add("report")
    p.add_argument("issue", metavar="ISSUE", help=issue_help)
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON object")
    fmt.add_argument("--csv", action="store_true", help="one CSV row per recipient")
    p = add("unsubscribe")
    p.add_argument("address", nargs="?", metavar="ADDRESS")
    p.add_argument("--token", help="the token from the message's unsubscribe link")
    add("suppressed")
    p = add("unsuppress")
    p.add_argument("address", metavar="ADDRESS")
    p = add("inbox")
    p.add_argument("sources", nargs="*", metavar="SOURCE",
                   help="a Maildir, an mbox, a message file or - (default: the IMAP mailbox)")
    p.add_argument("--dry-run", action="store_true", help="classify and print; change nothing")
    p.add_argument("--json", action="store_true", help="one JSON object")
    add("config")
    p = add("serve")
    p.add_argument("--host", help="address to listen on (default $MAILER_SERVE_HOST, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default $MAILER_SERVE_PORT, else 8080; 0: any free one)")
    return parser


def entry() -> NoReturn:
    """The `mailer` command. Its exit skips the interpreter's last garbage collections over
    every module imported (about 45 ms on a 2-core machine): by then nothing is left open."""
    code = main()
    gc.freeze()
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    # Starting up makes many objects and next to no garbage: no collections until the
    # command's own work begins (set_aside). A caller in the same process (the tests) gets
    # the collector back as it had it.
    enabled, frozen = gc.isenabled(), gc.get_freeze_count()
    gc.disable()
    try:
        return _main(argv)
    finally:
        if not frozen:
            gc.unfreeze()
        (gc.enable if enabled else gc.disable)()


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 0 for --help, 2 for usage errors
        return int(exc.code or 0)
    _setup_logging(args.verbose)
    try:
        from mailer.config import load_settings

        settings = load_settings(args.env_file)
        if args.verbose:
            log.debug("mailer %s, env file %s", __version__, args.env_file or "./.env when present")
            for name, value in settings.masked().items():
                log.debug("setting %s=%s", name, value)
        set_aside()
        return COMMANDS[args.command](args, settings)
    except IssueInvalid as exc:
        for line in exc.problems:
            sys.stderr.write(line + "\n")
        sys.stderr.write(f"{len(exc.problems)} problem(s); nothing was sent\n")
        return exc.exit_code
    except MailerError as exc:
        for line in str(exc).splitlines():
            sys.stderr.write(f"mailer {args.command}: {line}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("mailer: interrupted\n")
        return EXIT_TRY_LATER
    except BrokenPipeError:
        # `mailer report --csv | head`: the reader has had enough; not an error.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so the interpreter's final flush is quiet
        return EXIT_OK
    except (OSError, sqlite3.Error) as exc:
        # The last resort for a file error the library did not place: still one line and the
        # right code (a full disk: try later; a path that cannot be: fix it).
        error = storage_error(exc, getattr(exc, "filename", None) or "a file")
        sys.stderr.write(f"mailer {args.command}: {error}\n")
        return error.exit_code


