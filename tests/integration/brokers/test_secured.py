"""A secured broker, for real: a SASL_SSL listener (TLS with a certificate made here by
openssl, SCRAM-SHA-512 users created when the storage is formatted, ``kafka-storage format
--add-scram``) and no plaintext listener for clients. Every command that talks to Kafka
connects with the documented settings (``TALKSTREAM_KAFKA_SECURITY_PROTOCOL``,
``_SASL_MECHANISM``, ``_SASL_USERNAME``, ``_SASL_PASSWORD``, ``_SSL_CAFILE``); a wrong password
fails within seconds with one line that names the authentication failure; the password is
never printed.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from streams.dev.kafka import EmbeddedKafka
from streams.kafka_options import client_options
from streams.settings import Settings
from tests.integration.brokers.support import ROOT, Ran, talkstream
from tests.integration.conftest import System, http, session_kafka_version
from tests.support import free_port, seed_params, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.brokers]

MECHANISM = "SCRAM-SHA-512"
USER = "alice"


@dataclass(frozen=True)
class Tls:
    ca: Path  # the CA certificate clients trust (PEM)
    keystore: Path  # the broker's key and certificate chain (PKCS12)
    password: str  # of the keystore


def openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"openssl {args[0]} failed: {done.stderr}"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A CA and a broker certificate for 127.0.0.1, signed by it; made by openssl now."""
    where = tmp_path_factory.mktemp("tls")
    password = secrets.token_urlsafe(12)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.crt", "-days", "2", "-subj", "/CN=talkstream test CA", cwd=where)  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out",
            "broker.csr", "-subj", "/CN=127.0.0.1", cwd=where)  # fmt: skip
    (where / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
    )
    openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "broker.crt", "-days", "2", "-extfile", "ext.cnf",
            cwd=where)  # fmt: skip
    openssl("pkcs12", "-export", "-in", "broker.crt", "-inkey", "broker.key", "-certfile",
            "ca.crt", "-name", "broker", "-out", "broker.p12", "-passout", f"pass:{password}",
            cwd=where)  # fmt: skip
    return Tls(where / "ca.crt", where / "broker.p12", password)


@dataclass(frozen=True)
class Secured:
    broker: EmbeddedKafka
    tls: Tls
    password: str  # alice's

    def settings(self, password: str | None = None) -> dict[str, str]:
        """The documented variables, as a user sets them."""
        return {
            "kafka_bootstrap": self.broker.bootstrap,
            "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_mechanism": MECHANISM,
            "kafka_sasl_username": USER,
            "kafka_sasl_password": password or self.password,
            "kafka_ssl_cafile": str(self.tls.ca),
        }

    def env(self, base: dict[str, str], password: str | None = None) -> dict[str, str]:
        variables = {f"TALKSTREAM_{k.upper()}": v for k, v in self.settings(password).items()}
        return {**base, **variables}


@pytest.fixture(scope="module")
def secured(tls: Tls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    port, controller_port = free_port(), free_port()
    admin_password, alice_password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="admin" password="{admin_password}";'
    )
    overrides = {
        # clients reach the broker over SASL_SSL only; the controller listener stays internal
        "listeners": f"SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"SASL_SSL://127.0.0.1:{port}",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
        "inter.broker.listener.name": "SASL_SSL",
        "sasl.enabled.mechanisms": MECHANISM,
        "sasl.mechanism.inter.broker.protocol": MECHANISM,
        f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config": jaas,
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(tls.keystore),
        "ssl.keystore.password": tls.password,
        "ssl.key.password": tls.password,
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(tls.ca),
    }
    scram = [
        *("--add-scram", f"{MECHANISM}=[name=admin,password={admin_password}]"),
        *("--add-scram", f"{MECHANISM}=[name={USER},password={alice_password}]"),
    ]
    secured = Secured(
        EmbeddedKafka(
            tmp_path_factory.mktemp("secured"),
            port=port,
            controller_port=controller_port,
            version=session_kafka_version(),
            overrides=overrides,
            format_args=scram,
        ),
        tls,
        alice_password,
    )
    secured.broker.probe_options.update(client_options(Settings(**secured.settings())))
    secured.broker.start(timeout=120)
    yield secured
    secured.broker.stop()


def no_secret_in(texts: list[str], *passwords: str) -> None:
    for text in texts:
        for password in passwords:
            assert password not in text, "a SASL password was printed"


def test_every_command_connects_with_the_documented_settings(
    secured: Secured, tmp_path_factory: pytest.TempPathFactory
) -> None:
    system = System(secured.broker, tmp_path_factory.mktemp("system"), **secured.settings())
    outputs: list[Ran] = []

    def run(*args: str, timeout: float = 120, **env: str) -> Ran:
        ran = talkstream({**system.env, **env}, *args, timeout=timeout)
        outputs.append(ran)
        print(f"\n{ran}")
        assert ran.code == 0, ran
        return ran

    assert "created:" in run("topics").out
    system.start()
    try:
        # one site's key is revoked (Talkable has one API key per site)
        keys = {"test-site": "talkable-ok", "other-site": "talkable-other"}
        system.talkable("POST", "/_control", {"api_keys": keys})
        ids = {}
        for name, site, key in (
            ("ada", "test-site", "talkable-ok"),
            ("bob", "test-site", "talkable-ok"),
            ("eve", "other-site", "revoked"),
        ):
            params = seed_params(f"{name}@example.com", site=site, talkable_key=key)
            status, body = system.post(params)
            assert status == 202, body
            ids[name] = body["request_id"]
        rows = system.wait_terminal(list(ids.values()))
        assert {name: rows[rid].state for name, rid in ids.items()} == {
            "ada": "published",
            "bob": "published",
            "eve": "publish_failed",
        }
        replayed = system.root / "replayed.sqlite3"
        assert "3 requests" in run("replay", "--database-url", f"sqlite:///{replayed}").out
        assert "no differences" in run("replay", "--verify").out
        assert "published" in run("audit", "--request-id", ids["ada"]).out
        assert "test-site" in run("stats").out
        assert f"would redrive: {ids['eve']}" in run("redrive", "--dry-run").out
        # the cause is fixed (Talkable takes the site's key now): the redrive lands it
        system.talkable("POST", "/_control", {"api_keys": None})
        assert f"redriven: {ids['eve']}" in run("redrive").out
        wait_until(
            lambda: system.projection.request(ids["eve"]).state == "published",
            60,
            what="the redriven publication",
        )
        # its workers' executors and projector are static members, whose groups it deletes
        # once their sessions end: the shortest a broker allows (as test_bench_smoke.py), so
        # that it cleans up in seconds, not the default 30 s
        bench = run(
            "bench",
            "--tiny",
            "--bootstrap",
            secured.broker.bootstrap,
            timeout=600,
            TALKSTREAM_SESSION_TIMEOUT_SECONDS="6",
        )
        # its own worker, ingress, relay and readers connected; nothing lost on the way
        assert "| lost requests / duplicate Talkable events | 0 / 0 |" in bench.out
    finally:
        system.stop()
    logs = [system.log(name) for name in ("worker", "ingress", "openai", "talkable")]
    assert "Authenticated as alice" in (system.root / "worker.log").read_text()
    no_secret_in(
        [str(r) for r in outputs] + logs + [secured.broker.log_tail(10_000)], secured.password
    )


def test_a_wrong_password_fails_fast_with_a_clear_message(
    secured: Secured, tmp_path_factory: pytest.TempPathFactory
) -> None:
    wrong = secrets.token_urlsafe(16)
    root = tmp_path_factory.mktemp("wrong")
    env = secured.env(System(secured.broker, root).env, password=wrong)
    commands = [
        ("topics",),
        ("worker",),
        ("replay", "--database-url", f"sqlite:///{root / 'replayed.sqlite3'}"),
        ("replay", "--verify"),
        ("redrive", "--dry-run"),
        ("bench", "--tiny", "--bootstrap", secured.broker.bootstrap),
    ]
    outputs = []
    for args in commands:
        ran = talkstream(env, *args, timeout=120)
        outputs.append(str(ran))
        last = ran.err.strip().splitlines()[-1] if ran.err.strip() else ""
        print(f"\n$ talkstream {' '.join(args)}  -> exit {ran.code} in {ran.seconds:.1f}s: {last}")
        assert ran.code != 0, ran
        assert ran.seconds < 30, ran
        assert "refused the SASL credentials: authentication failed for user 'alice'" in last, ran

    # the ingress keeps answering (503: Talkable retries) and logs why
    port = free_port()
    log = root / "ingress.log"
    with log.open("wb") as out:
        ingress = subprocess.Popen(
            [sys.executable, "-m", "streams", "ingress"],
            env={**env, "TALKSTREAM_INGRESS_PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        started = time.monotonic()
        clear = "refused the SASL credentials: authentication failed for user 'alice'"
        wait_until(lambda: clear in log.read_text(), 30, what="the reason in the ingress log")
        print(f"ingress logged within {time.monotonic() - started:.1f}s:")
        print(next(line for line in log.read_text().splitlines() if clear in line))
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(f"{url}/healthz"), 30, what="the ingress")
        status, body = http("POST", f"{url}/chat-gpt/generate", seed_params())
        assert status == 503, body
    finally:
        ingress.terminate()
        ingress.wait(timeout=30)
    no_secret_in([*outputs, log.read_text()], wrong, secured.password)


def _answers(url: str) -> bool:
    try:
        return http("GET", url, timeout=2)[0] == 200
    except OSError:
        return False
