"""transport/tls.py: which URLs may carry secrets, and the SSL context every client uses
(tests/daemon/test_direct_get_tls.py uses it against a real TLS server)."""

from __future__ import annotations

import pytest

from kachery_node.errors import ConfigError, InsecureUrlError
from kachery_node.transport.tls import is_loopback_host, require_secure_url, ssl_context


@pytest.mark.parametrize("url", [
    "https://hub.lab.example", "wss://hub.lab.example:8443/pubsub", "http://127.0.0.1:8080",
    "http://127.0.0.2:1/x", "ws://127.9.9.9/pubsub", "http://[::1]:8080", "http://localhost:8080",
    "HTTP://LOCALHOST", "http://a.localhost/"])
def test_secure_or_this_machine_is_allowed(url, monkeypatch):
    monkeypatch.delenv("KACHERY_INSECURE_HTTP", raising=False)
    require_secure_url(url, "a token")


@pytest.mark.parametrize("url", [
    "http://hub.lab.example:8080", "ws://hub.lab.example/pubsub", "http://10.0.0.5:8080",
    "http://192.168.1.2", "http://[2001:db8::1]:80", "http://localhost.evil.example",
    "http://127.0.0.1.nip.io"])
def test_plain_http_to_another_machine_is_refused_unless_meant(url, monkeypatch):
    monkeypatch.delenv("KACHERY_INSECURE_HTTP", raising=False)
    with pytest.raises(InsecureUrlError, match="refusing to send a token over plain") as err:
        require_secure_url(url, "a token")
    assert err.value.url == url and "--insecure-http" in str(err.value)
    assert isinstance(err.value, ConfigError)
    require_secure_url(url, "a token", insecure=True)
    monkeypatch.setenv("KACHERY_INSECURE_HTTP", "1")
    require_secure_url(url, "a token")


@pytest.mark.parametrize("url", ["ftp://hub", "hub.lab.example:8080", "https://", ""])
def test_what_is_not_an_http_url_is_a_config_error(url):
    with pytest.raises(ConfigError, match="not an http"):
        require_secure_url(url, "a token")


def test_loopback_is_decided_from_the_url_alone():
    assert is_loopback_host("127.0.0.2") and is_loopback_host("::1") and is_loopback_host("LOCALHOST.")
    assert not is_loopback_host("hub.lab.example") and not is_loopback_host("0.0.0.0")


def test_a_bad_ca_file_is_a_config_error_naming_it(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match=f"cannot use {bad} as a CA file"):
        ssl_context(bad)
    with pytest.raises(ConfigError, match="cannot use"):
        ssl_context(tmp_path / "missing.pem")
