#!/usr/bin/env python3
"""Print seatrush final events as they are published.

Usage:
    pip install pika
    python3 watch_finals.py [--course ID] [--student ID] [--prefix seatrush] [--seconds N]

Follows every final answer, one course's, one student's, or one student's in one course
(protocol version 2). The workers publish final answers either in batches, one message per
group commit with routing key "finals" (the default), or one message per answer with routing
key "final.<course>.<student>" (worker option --final-events per-request); promotions always
come one per message as "final.<course>.<student>". So the script binds both "finals" and
"final.<course or *>.<student or *>", and keeps the answers of each batch that match. Each
answer is printed as "<routing key> <JSON answer>". The broker URL comes from AMQP_URL
(default amqp://guest:guest@127.0.0.1:25673/%2f).

A temporary exclusive queue only receives events published while it exists. A service
that must not miss events should declare its own durable queue and bind it the same way.
"""

import argparse
import json
import os
import sys
import time

import pika

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:25673/%2f"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--course", help="only this course's answers")
    p.add_argument("--student", help="only this student's answers")
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
    exchange = f"{args.prefix}.events"
    channel.queue_bind(queue, exchange, routing_key="finals")
    channel.queue_bind(
        queue, exchange, routing_key=f"final.{args.course or '*'}.{args.student or '*'}"
    )

    def followed(answer) -> bool:
        return (args.course is None or answer["course_id"] == args.course) and (
            args.student is None or answer["student_id"] == args.student
        )

    def on_event(_channel, method, _properties, body):
        decoded = json.loads(body)
        for answer in decoded if isinstance(decoded, list) else [decoded]:
            if followed(answer):
                print(f"{method.routing_key} {json.dumps(answer, separators=(",", ":"))}", flush=True)

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
