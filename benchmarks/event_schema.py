"""What the event schema check (``ingest.schema``) costs on the decode path.

The same JSON lines of the default synthetic stream (features ``category``,
``country``, ``hour``, ``price``; the model reads them all, ``price`` as dense)
are decoded in alternating rounds by two arms:

- ``decode``         ``ingest.source.decode_records`` alone;
- ``decode+schema``  the same, then ``EventSchema.screen`` (the loop's next step):
                     event types and the model's feature types.

Reported: events/s per arm and decode+schema / decode.

    python -m benchmarks.event_schema            # 200k events, ~30 s
    python -m benchmarks.event_schema --events 50000
"""

from __future__ import annotations

import argparse
import time

from benchmarks.report import format_table, write_result
from streamrec.ingest.decode import encode_json
from streamrec.ingest.event_schema import EventSchema
from streamrec.ingest.source import SourceBatch, decode_records
from streamrec.synthetic import SyntheticStream, default


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args(argv)
    lines = [(encode_json(e), "bench") for e in SyntheticStream(default()).events(args.events)]
    schema = EventSchema(["click", "like", "share", "purchase"], ["price"],
                         ["user_id", "item_id", "category", "country", "hour"])
    seconds = {"decode": 0.0, "decode+schema": 0.0}
    for r in range(args.rounds):
        for arm in (seconds if r % 2 == 0 else reversed(list(seconds))):
            t0 = time.perf_counter()
            events, dead = decode_records(lines, "json")
            if arm == "decode+schema":
                out = schema.screen(SourceBatch(events, dead))
                assert len(out.events) == len(lines)
            seconds[arm] += time.perf_counter() - t0
    rates = {arm: args.rounds * len(lines) / s for arm, s in seconds.items()}
    ratio = rates["decode+schema"] / rates["decode"]
    print(format_table(["arm", "events/s"], [[a, r] for a, r in rates.items()]))
    print(f"decode+schema / decode: {ratio:.3f}x events/s")
    path = write_result("event_schema", {"events": len(lines), "rounds": args.rounds,
                                         "events_per_second": rates,
                                         "schema_over_decode": ratio})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
