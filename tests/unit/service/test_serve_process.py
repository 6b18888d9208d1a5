"""``vmsentinel serve`` as a process (no guest): a configuration file, HTTPS with a certificate on
an address beyond this host, session cookies marked Secure, plain HTTP refused there, and SIGTERM
ending it cleanly (exit 0)."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from tests.tls import self_signed

from vmsentinel.errors import VmSentinelError
from vmsentinel.service.config import load_config


def test_the_configuration_file_is_checked_and_its_paths_are_its_own(tmp_path: Path) -> None:
    conf = tmp_path / "serve.toml"
    conf.write_text(
        'listen = "0.0.0.0:8443"\ntls_cert = "tls.pem"\nstate_dir = "/var/lib/x"\ntrusted_keys = ["k.pub"]\nworkers = 2\n'
    )
    got = load_config(conf)
    assert got["tls_cert"] == str(tmp_path / "tls.pem") and got["state_dir"] == "/var/lib/x"
    assert got["trusted_keys"] == [str(tmp_path / "k.pub")] and got["workers"] == 2
    for text, message in (
        ("lisen = 1\n", "unknown setting 'lisen'"),
        ('workers = "2"\n', "workers must be int"),
        ("insecure_http = 1\n", "insecure_http must be bool"),
        ("targets = [1]\n", "list of strings"),
        ("listen = \n", "not valid TOML"),
    ):
        conf.write_text(text)
        with pytest.raises(VmSentinelError, match=message):
            load_config(conf)
    with pytest.raises(VmSentinelError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_https_beyond_this_host_with_a_certificate_and_a_clean_stop(tmp_path: Path) -> None:
    cert, _key = self_signed(tmp_path)
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "serve.toml"
    conf.write_text(f'listen = "0.0.0.0:{port}"\ntls_cert = "tls.pem"\ntls_key = "tls.key"\nstate_dir = "state"\nworkers = 0\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmsentinel", "serve", "--config", str(conf)], stderr=subprocess.PIPE, text=True
    )
    context = ssl.create_default_context(cafile=str(cert))
    try:
        ends, health = time.monotonic() + 60, None
        while time.monotonic() < ends and health is None:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=context, timeout=5) as answer:
                    health = json.load(answer)
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.3)
        assert health is not None and health["status"] == "ok"
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/login", context=context, timeout=5) as answer:
            cookie = answer.headers["set-cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        with pytest.raises(OSError):  # no plain HTTP on a TLS port
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, proc.stderr.read() if proc.stderr else ""
    assert (tmp_path / "state" / "service.db").exists() and (tmp_path / "state" / "findings.db").exists()
