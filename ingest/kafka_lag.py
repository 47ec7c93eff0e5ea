"""Partition end offsets for the consumer-lag gauge, listed on a thread of their own.

A consumer learns a partition's high watermark only from its fetch responses, and
kafka-python fetches a partition only once the records it buffered are returned:
while a slow trainer works through a buffer, records arriving at the broker do not
show, and the lag read 0 with thousands waiting. Listing the end offsets
(ListOffsets, latest) shows them; it is a blocking request, so it runs here, every
few seconds on its own connection, never on the training loop's thread.

Some brokers report the end low: Tansu answers with the start of the partition's
last record batch, so there the lag is short by up to one producer batch (the next
fetch's high watermark corrects it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from kafka import KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

__all__ = ["EndOffsets"]

log = logging.getLogger(__name__)

_TIMEOUT_MS = 5_000


class EndOffsets:
    """Lists the end offsets of ``partitions()`` every ``interval_s`` on a daemon thread.

    :meth:`get` returns the latest listing, safe from any thread; a failed listing
    keeps the previous one (the next try comes ``interval_s`` later).
    """

    def __init__(self, bootstrap_servers: list[str], client_id: str,
                 partitions: Callable[[], list[tuple[str, int]]],
                 interval_s: float = 5.0, security: Mapping[str, Any] | None = None) -> None:
        self._bootstrap = bootstrap_servers
        self._security = dict(security or {})
        self._client_id = client_id
        self._partitions = partitions
        self._interval_s = interval_s
        self._ends: dict[tuple[str, int], int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="streamrec-end-offsets",
                                        daemon=True)
        self._thread.start()

    def get(self) -> dict[tuple[str, int], int]:
        return self._ends

    def _run(self) -> None:
        consumer: KafkaConsumer | None = None
        failing = False
        try:
            while not self._stop.is_set():
                parts = [TopicPartition(t, p) for t, p in self._partitions()]
                if parts:
                    try:
                        if consumer is None:
                            consumer = KafkaConsumer(bootstrap_servers=self._bootstrap,
                                                     client_id=self._client_id,
                                                     enable_auto_commit=False,
                                                     **self._security)
                        ends = consumer.end_offsets(parts, timeout_ms=_TIMEOUT_MS)
                        self._ends = {(tp.topic, tp.partition): int(o)
                                      for tp, o in ends.items() if o is not None}
                        failing = False
                    except KafkaError as e:
                        if not failing:  # (once per outage)
                            log.warning("listing end offsets for the lag failed (retrying "
                                        "every %.0f s): %s", self._interval_s, e)
                        failing = True
                self._stop.wait(self._interval_s)
        finally:
            if consumer is not None:
                consumer.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=_TIMEOUT_MS / 1000 + 5)
