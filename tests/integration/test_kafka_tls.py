"""Kafka over TLS: every client of the trainer connects as ``[ingest]`` says.

The broker is reached only through a TLS proxy whose certificate a test CA
signed: ``streamrec replay`` produces through it, the trainer's source reads
every event once and its dead-letter producer writes through it, and a
client that does not trust the CA gets a one-line error, not a connection.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from streamrec.config import IngestConfig
from streamrec.ingest.deadletter import KafkaDeadLetterSink
from streamrec.ingest.kafka_security import client_security
from streamrec.ingest.kafka_source import KafkaSource, create_topics
from streamrec.ingest.source import DeadLetter
from tests.integration.conftest import start_broker
from tests.integration.kafka_proxy import TlsProxy
from tests.integration.processes import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``(address, CA file)`` of a broker that only speaks TLS, with a certificate for 127.0.0.1."""
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    port, proxy_port = free_port(), free_port()
    proxy = TlsProxy(proxy_port, port, context)
    security = {"security_protocol": "SSL", "ssl_cafile": str(ca_file)}
    try:
        with start_broker(port=port, advertised_port=proxy_port, security=security) as (
                address, _):
            yield address, ca_file
    finally:
        proxy.close()


def tls_config(address: str, ca_file: Path, **more: object) -> IngestConfig:
    return IngestConfig(bootstrap_servers=[address], topics=["tls-events"],
                        group_id="tls-trainer", security_protocol="SSL",
                        ssl_cafile=str(ca_file), **more)  # type: ignore[arg-type]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "streamrec.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)


def test_replay_and_the_source_read_every_event_once_over_tls(
        tls_broker: tuple[str, Path], tmp_path: Path) -> None:
    address, ca_file = tls_broker
    config = tls_config(address, ca_file)
    create_topics(address, ["tls-events"], partitions=2, security=client_security(config))
    path = tmp_path / "events.jsonl"
    ids = [f"e{i}" for i in range(500)]
    path.write_text("".join(json.dumps({
        "type": "example", "label": i % 2, "user_id": i % 17, "item_id": i,
        "timestamp_ms": 1_700_000_000_000 + i, "event_id": e}) + "\n" for i, e in enumerate(ids)))
    sent = cli("replay", str(path), "--topic", "tls-events", "--bootstrap-servers", address,
               "--quiet", "--set", "ingest.security_protocol=SSL",
               "--set", f"ingest.ssl_cafile={ca_file}")
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["sent"] == 500

    source = KafkaSource(config)
    try:
        got: list[str] = []
        for _ in range(200):
            got += [e.event_id for e in source.poll(1000, 0.5).events]
            if len(got) >= len(ids):
                break
    finally:
        source.close()
    assert sorted(got) == sorted(ids)


def test_dead_letters_are_written_over_tls(tls_broker: tuple[str, Path]) -> None:
    from kafka import KafkaConsumer

    address, ca_file = tls_broker
    security = client_security(tls_config(address, ca_file))
    create_topics(address, ["tls-dead"], security=security)
    sink = KafkaDeadLetterSink([address], "tls-dead", security=security)
    sink.put([DeadLetter(b"{not json", "malformed", "not valid JSON", "tls-events/0@7")])
    sink.close()
    consumer = KafkaConsumer("tls-dead", bootstrap_servers=address, auto_offset_reset="earliest",
                             consumer_timeout_ms=10_000, **security)
    try:
        values = [record.value for record in consumer]
    finally:
        consumer.close()
    assert values == [b"{not json"]


def test_a_client_that_does_not_trust_the_brokers_ca_is_refused_in_one_line(
        tls_broker: tuple[str, Path], tmp_path: Path) -> None:
    address, _ = tls_broker
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps({"type": "example", "label": 1, "user_id": 1, "item_id": 2,
                                "timestamp_ms": 1_700_000_000_000}) + "\n")
    refused = cli("replay", str(path), "--topic", "tls-events", "--bootstrap-servers", address,
                  "--quiet", "--set", "ingest.security_protocol=SSL",
                  "--set", f"ingest.ssl_cafile={other_ca}")
    assert refused.returncode != 0
    assert f"cannot reach Kafka at {address}" in refused.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in refused.stderr  # kafka-python logs why
    assert "Traceback" not in refused.stderr
