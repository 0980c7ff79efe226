"""Outbound requests connect to the address that was checked (issue 18, DNS rebinding)."""

from __future__ import annotations

import datetime as dt
import ssl

import pytest
import urllib3

from farm.outbound import OutboundClient, OutboundRefused, check_url
from tests.support.receivers import RebindingResolver, Receiver

HOST = "hooks.example.test"


@pytest.fixture()
def receiver_and_trap():
    """A receiver on 127.0.0.1 and a trap on 127.0.0.2, on the same port."""
    receiver = Receiver()
    trap = Receiver(host="127.0.0.2", port=receiver.port)
    yield receiver, trap
    receiver.close()
    trap.close()


def post(client, url):
    return client.post(url, b'{"event": "test"}', {"Content-Type": "application/json"})


def test_the_connection_goes_to_the_checked_address_with_the_urls_host(receiver_and_trap, monkeypatch):
    receiver, trap = receiver_and_trap
    # Allowed at the check, refused to any lookup after it: an HTTP client that
    # resolved the name again would reach the trap.
    resolver = RebindingResolver(HOST, ["127.0.0.1"], then="127.0.0.2")
    monkeypatch.setattr("socket.getaddrinfo", resolver)
    assert post(OutboundClient(allow="127.0.0.1"), f"http://{HOST}:{receiver.port}/hook?x=1") == 204
    assert trap.received == [] and len(receiver.received) == 1
    assert receiver.received[0][0]["Host"] == f"{HOST}:{receiver.port}"
    assert resolver.lookups == ["127.0.0.1"]


def test_an_address_refused_at_the_check_is_never_reached(receiver_and_trap, monkeypatch):
    receiver, trap = receiver_and_trap
    monkeypatch.setattr("socket.getaddrinfo", RebindingResolver(HOST, ["127.0.0.2"], then="127.0.0.1"))
    with pytest.raises(OutboundRefused, match="127.0.0.2, a loopback address"):
        post(OutboundClient(allow="127.0.0.1"), f"http://{HOST}:{receiver.port}/hook")
    assert receiver.received == [] and trap.received == []


def test_a_checked_address_that_does_not_answer_gives_way_to_the_next(monkeypatch):
    live = Receiver(host="127.0.0.2")  # nothing listens on 127.0.0.1 at its port
    monkeypatch.setattr("socket.getaddrinfo", RebindingResolver(HOST, [["127.0.0.1", "127.0.0.2"]], then="127.0.0.3"))
    assert post(OutboundClient(allow="127.0.0.0/29"), f"http://{HOST}:{live.port}/hook") == 204
    assert len(live.received) == 1
    live.close()


def test_redirects_are_answered_not_followed(receiver_and_trap):
    _, trap = receiver_and_trap
    redirecting = Receiver(status=302, headers={"Location": trap.url})
    assert post(OutboundClient(allow="127.0.0.0/8"), redirecting.url) == 302
    assert len(redirecting.received) == 1 and trap.received == []
    redirecting.close()


@pytest.fixture()
def tls_receiver(tmp_path):
    """An HTTPS receiver on 127.0.0.1 whose certificate names only HOST (no IP
    address), signed by a test CA; yields the receiver and the CA file."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def certificate(subject, issuer, public_key, signing_key, ca):
        now = dt.datetime.now(dt.timezone.utc)
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
                   .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(hours=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "farm test CA")])
    ca_cert = certificate(ca_name, ca_name, ca_key.public_key(), ca_key, ca=True)
    leaf = certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]), ca_name, key.public_key(), ca_key, ca=False)
    (tmp_path / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "leaf.pem")
    receiver = Receiver(tls=context)
    yield receiver, str(tmp_path / "ca.pem")
    receiver.close()


def test_https_connects_to_the_address_and_verifies_the_host_name(tls_receiver, monkeypatch):
    receiver, ca = tls_receiver
    monkeypatch.setattr("socket.getaddrinfo", RebindingResolver(HOST, ["127.0.0.1"], then="127.0.0.2"))
    client = OutboundClient(allow="127.0.0.1", ca_certs=ca)
    assert post(client, f"https://{HOST}:{receiver.port}/hook") == 204
    assert receiver.server_names == [HOST]  # SNI names the host, not the address
    assert receiver.received[0][0]["Host"] == f"{HOST}:{receiver.port}"


def test_https_refuses_a_certificate_for_another_name(tls_receiver, monkeypatch):
    receiver, ca = tls_receiver
    monkeypatch.setattr("socket.getaddrinfo", RebindingResolver("other.example.test", ["127.0.0.1"], then="127.0.0.1"))
    with pytest.raises(urllib3.exceptions.SSLError, match="other.example.test"):
        post(OutboundClient(allow="127.0.0.1", ca_certs=ca), f"https://other.example.test:{receiver.port}/hook")
    assert receiver.received == []


@pytest.mark.parametrize("url", ["http://4\U0001f253[", "http://[::1", "https://[not-an-address]/"])
def test_a_url_python_cannot_split_is_refused_not_an_error(url):
    with pytest.raises(OutboundRefused, match="not a URL that can be parsed"):
        check_url(url, resolve=lambda *a, **k: [])
