#!/usr/bin/env python3
"""Print seatrush final events as they are published.

Usage:
    pip install pika
    python3 watch_finals.py [PATTERN] [--prefix seatrush] [--seconds N]

PATTERN is a topic binding key on the events exchange (default "final.#"), for example
"final.CS101.*" (one course) or "final.*.s123" (one student). Each event is printed as
"<routing key> <JSON body as received>". The broker URL comes from AMQP_URL
(default amqp://guest:guest@127.0.0.1:25673/%2f).

A temporary exclusive queue only receives events published while it exists. A service
that must not miss events should declare its own durable queue and bind it the same way.
"""

import argparse
import os
import sys
import time

import pika

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:25673/%2f"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("pattern", nargs="?", default="final.#")
    p.add_argument("--prefix", default=os.environ.get("SEATRUSH_PREFIX", "seatrush"))
    p.add_argument(
        "--seconds", type=float, default=None, help="stop after this long (default: never)"
    )
    args = p.parse_args()

    connection = pika.BlockingConnection(
        pika.URLParameters(os.environ.get("AMQP_URL", DEFAULT_URL))
    )
    channel = connection.channel()
    queue = channel.queue_declare(queue="", exclusive=True, auto_delete=True).method.queue
    channel.queue_bind(queue, f"{args.prefix}.events", routing_key=args.pattern)

    def on_event(_channel, method, _properties, body):
        print(f"{method.routing_key} {body.decode()}", flush=True)

    channel.basic_consume(queue, on_event, auto_ack=True)
    try:
        if args.seconds is None:
            channel.start_consuming()
        else:
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline:
                connection.process_data_events(time_limit=max(0.0, deadline - time.monotonic()))
    except KeyboardInterrupt:
        pass
    finally:
        connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
