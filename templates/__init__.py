"""The email's default look, installed with the package as `mailer.templates`.

This folder holds only templates and CSS; this file makes it a package so that an editable
install and a wheel find the same defaults the same way.
"""
