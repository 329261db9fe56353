"""The deployment files in deploy/ agree with the mailer: the port it listens on by default, the
command that serves, and the DKIM headers RFC 8058 needs signed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mailer.config import Settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_the_proxies_forward_the_unsubscribe_path_to_the_default_address():
    default = f"{Settings().serve_host}:{Settings().serve_port}"
    nginx = (DEPLOY / "nginx.conf").read_text(encoding="utf-8")
    assert re.search(rf"location /unsubscribe/ \{{[^}}]*proxy_pass http://{re.escape(default)};", nginx)
    assert "access_log off;" in nginx  # the URL carries the token
    caddy = (DEPLOY / "Caddyfile").read_text(encoding="utf-8")
    block = caddy[caddy.index("handle /unsubscribe/* {"):]
    assert f"reverse_proxy {default}\n\t}}" in block


def test_opendkim_signs_both_list_unsubscribe_headers():
    conf = (DEPLOY / "opendkim.conf").read_text(encoding="utf-8")
    line = re.search(r"^SignHeaders\s+(\S+)$", conf, re.M)
    assert line is not None
    signed = {h.lower() for h in line.group(1).split(",")}
    assert {"from", "list-unsubscribe", "list-unsubscribe-post"} <= signed


def test_the_systemd_unit_is_valid_and_runs_mailer_serve(tmp_path):
    unit = (DEPLOY / "mailer-serve.service").read_text(encoding="utf-8")
    exec_start = re.search(r"^ExecStart=(\S+) serve --env-file (\S+)$", unit, re.M)
    assert exec_start is not None and exec_start.group(1).endswith("/.venv/bin/mailer")
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    # The unit as an operator edits it: a real mailer and a user of this machine.
    local = unit.replace(exec_start.group(1), str(Path(sys.executable).with_name("mailer")))
    local = re.sub(r"^User=.*$", "User=root", local, flags=re.M)
    local = re.sub(r"^Group=.*$", "Group=root", local, flags=re.M)
    path = tmp_path / "mailer-serve.service"
    path.write_text(local, encoding="utf-8")
    done = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "mailer-serve.service" not in done.stderr, done.stderr  # no warning about the unit itself
