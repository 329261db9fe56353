from mailer.cli import entry

entry()
