"""The Top Ten mailer: validate, preview and deliver a daily issue of ten stories."""

__version__ = "0.1.0"
