"""TLS and mTLS end to end: `veil dev-cert` writes the certificates, `veil
serve --tls-*` serves them, and ADBC and pyarrow connect over grpc+tls://."""

import subprocess

import pyarrow.flight as flight
import pytest

from conftest import ROOT, _binary, start_server, stop_server
from helpers import connect, rows

TLS = "adbc.flight.sql.client_option.tls_root_certs"
MTLS_CERT = "adbc.flight.sql.client_option.mtls_cert_chain"
MTLS_KEY = "adbc.flight.sql.client_option.mtls_private_key"


def _dev_cert(out, *clients):
    args = [str(_binary()), "dev-cert", "--out", str(out)]
    for c in clients:
        args += ["--client", c]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True)
    assert "server-key.pem" in done.stdout
    return {p.name: p.read_text() for p in out.iterdir()}


def _serve_tls(tmp_path, certs, mtls=False):
    args = ["--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server-key.pem")]
    if mtls:
        args += ["--tls-client-ca", str(certs / "ca.pem")]
    proc, uri = start_server(str(tmp_path / "data"), serve_args=args)
    return proc, uri.replace("grpc://127.0.0.1", "grpc+tls://localhost"), uri


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number, payload):
    return bytes([number << 3 | 2]) + _varint(len(payload)) + payload


def _statement_query(sql):
    """A Flight SQL CommandStatementQuery wrapped in protobuf Any."""
    command = _field(1, sql.encode())
    type_url = b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery"
    return _field(1, type_url) + _field(2, command)


def _pyarrow_query(client, options, sql):
    descriptor = flight.FlightDescriptor.for_command(_statement_query(sql))
    info = client.get_flight_info(descriptor, options)
    return client.do_get(info.endpoints[0].ticket, options).read_all()


def test_adbc_and_pyarrow_query_over_tls_and_plaintext_is_refused(tmp_path):
    certs = tmp_path / "certs"
    files = _dev_cert(certs)
    assert "BEGIN CERTIFICATE" in files["ca.pem"]
    proc, tls_uri, plain_uri = _serve_tls(tmp_path, certs)
    try:
        with connect(tls_uri, "bob", **{TLS: files["ca.pem"]}) as bob:
            assert rows(bob, "SELECT DISTINCT region FROM sales.transactions") == [("US",)]
        with pytest.raises(Exception):
            with connect(plain_uri, "bob") as plain:
                rows(plain, "SELECT 1")

        client = flight.FlightClient(tls_uri, tls_root_certs=files["ca.pem"].encode())
        header = client.authenticate_basic_token("carol", "carol-pw")
        table = _pyarrow_query(
            client,
            flight.FlightCallOptions(headers=[header]),
            "SELECT DISTINCT region FROM sales.transactions",
        )
        assert table.column(0).to_pylist() == ["EU"]

        # A client that does not trust the server's CA fails.
        other = _dev_cert(tmp_path / "other")
        with pytest.raises(Exception):
            with connect(tls_uri, "bob", **{TLS: other["ca.pem"]}) as untrusting:
                rows(untrusting, "SELECT 1")
    finally:
        stop_server(proc)


class _CertificateLogin(flight.ClientAuthHandler):
    """A Handshake with no credentials: the client certificate logs in."""

    def __init__(self):
        super().__init__()
        self.token = b""

    def authenticate(self, outgoing, incoming):
        outgoing.write(b"")
        self.token = incoming.read()

    def get_token(self):
        return b""


def test_mtls_client_certificates_name_the_user(tmp_path):
    certs = tmp_path / "certs"
    files = _dev_cert(certs, "alice")
    proc, tls_uri, _ = _serve_tls(tmp_path, certs, mtls=True)
    try:
        alice_tls = {TLS: files["ca.pem"], MTLS_CERT: files["alice.pem"], MTLS_KEY: files["alice-key.pem"]}
        with connect(tls_uri, "alice", **alice_tls) as alice:
            assert len(rows(alice, "SELECT DISTINCT region FROM sales.transactions")) == 3
        # alice's certificate cannot log in bob, even with bob's password.
        with pytest.raises(Exception, match="cannot log in as bob"):
            with connect(tls_uri, "bob", **alice_tls) as bob:
                rows(bob, "SELECT 1")
        # Without a client certificate nothing works.
        with pytest.raises(Exception):
            with connect(tls_uri, "bob", **{TLS: files["ca.pem"]}) as bob:
                rows(bob, "SELECT 1")

        # pyarrow: the certificate alone logs alice in.
        client = flight.FlightClient(
            tls_uri,
            tls_root_certs=files["ca.pem"].encode(),
            cert_chain=files["alice.pem"].encode(),
            private_key=files["alice-key.pem"].encode(),
        )
        login = _CertificateLogin()
        client.authenticate(login)
        assert login.token, "the Handshake answered with a bearer token"
        options = flight.FlightCallOptions(headers=[(b"authorization", b"Bearer " + login.token)])
        table = _pyarrow_query(client, options, "SELECT count(DISTINCT region) AS n FROM sales.transactions")
        assert table.column(0).to_pylist() == [3]
    finally:
        stop_server(proc)
