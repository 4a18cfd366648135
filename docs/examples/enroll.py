#!/usr/bin/env python3
"""Publish one seatrush request and print its provisional and final answers.

Usage:
    pip install pika
    python3 enroll.py COURSE_ID STUDENT_ID [--action enroll|drop] [--request-id ID]
                      [--prefix seatrush] [--timeout 30] [--until-promoted] [--batch]

The broker URL comes from AMQP_URL (default amqp://guest:guest@127.0.0.1:25673/%2f).

Each answer is printed on its own line as "<stage>: <JSON answer>".

With --batch, the request asks for batched answers (header x-seatrush-batch, protocol version 2):
a message on the reply queue is then a JSON array of answers, each with the request's
correlation_id inside. A web back end sharing one reply queue between many requests would do
this; the script reads both shapes either way.

With --until-promoted, a "waitlisted" final answer does not end the wait: the script keeps
listening on the same reply queue until the "promoted" event for the request arrives (a drop
freed a seat) or the timeout passes.

Exit status:
    0  the final answer arrived (whatever its outcome), or with --until-promoted the promotion
    1  no final answer before the timeout
    2  the request could not be published (queue full until the timeout, no route,
       missing exchange, connection failure)
"""

import argparse
import json
import os
import sys
import time
import uuid

import pika
import pika.exceptions

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:25673/%2f"


def main() -> int:
    args = parse_args()
    # The request id is the idempotency key: keep it for every retry of this request.
    request_id = args.request_id or uuid.uuid4().hex
    deadline = time.monotonic() + args.timeout

    try:
        connection = pika.BlockingConnection(
            pika.URLParameters(os.environ.get("AMQP_URL", DEFAULT_URL))
        )
    except pika.exceptions.AMQPError as e:
        print(f"error: cannot connect to the broker: {e!r}", file=sys.stderr)
        return 2

    try:
        channel = connection.channel()

        # A private reply queue: exclusive, auto-deleted, named by the broker. It is
        # declared (and consumed) before publishing, so no answer can be missed.
        reply_queue = channel.queue_declare(
            queue="", exclusive=True, auto_delete=True
        ).method.queue

        answers = []

        def on_answer(_channel, _method, properties, body):
            # One answer, or a batch of them (a JSON array). A single answer echoes
            # correlation_id as its property, an answer in a batch inside itself; ignore
            # anything that is not ours.
            decoded = json.loads(body)
            for answer in decoded if isinstance(decoded, list) else [decoded]:
                ours = answer.get("correlation_id", properties.correlation_id)
                if ours == request_id:
                    answers.append(answer)

        channel.basic_consume(reply_queue, on_answer, auto_ack=True)

        # Publisher confirms: basic_publish now waits for the broker's ack and raises
        # NackError on a nack (the partition queue is full) or UnroutableError when the
        # message reached no queue (mandatory=True).
        channel.confirm_delivery()

        body = json.dumps(
            {
                "action": args.action,
                "course_id": args.course_id,
                "student_id": args.student_id,
            }
        ).encode()
        properties = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=2,  # persistent
            message_id=request_id,  # required: the request id
            reply_to=reply_queue,
            correlation_id=request_id,  # echoed on every answer
            headers={"x-seatrush-batch": True} if args.batch else None,
        )

        if not publish(channel, args, body, properties, deadline):
            return 2

        # Wait for the final answer; the provisional one (if any) comes first.
        while time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.2)
            while answers:
                answer = answers.pop(0)
                print(f"{answer['stage']}: {json.dumps(answer, separators=(",", ":"))}", flush=True)
                if answer["stage"] != "final":
                    continue
                if args.until_promoted and answer["outcome"] == "waitlisted":
                    # Keep listening: a freed seat brings a "promoted" event for this
                    # request to this reply queue, with this correlation_id.
                    continue
                return 0
        print(
            f"error: no final answer for request {request_id} within {args.timeout}s "
            "(is a worker running?)",
            file=sys.stderr,
        )
        return 1
    except pika.exceptions.ChannelClosedByBroker as e:
        # 404 NOT_FOUND here means the exchange does not exist: no worker has
        # declared the topology for this prefix yet.
        print(f"error: the broker closed the channel: {e!r}", file=sys.stderr)
        return 2
    except pika.exceptions.AMQPConnectionError as e:
        print(f"error: lost the broker connection: {e!r}", file=sys.stderr)
        return 2
    finally:
        if connection.is_open:
            connection.close()


def publish(channel, args, body, properties, deadline) -> bool:
    """Publishes with confirms, retrying nacks with backoff and the same request id."""
    delay = 0.2
    attempt = 0
    while True:
        attempt += 1
        try:
            channel.basic_publish(
                exchange=f"{args.prefix}.requests",
                routing_key=args.course_id,  # the course id picks the partition
                body=body,
                properties=properties,
                mandatory=True,
            )
            return True
        except pika.exceptions.NackError:
            # The partition queue is at its x-max-length (overflow reject-publish).
            # Retrying with the same request id is safe: it can never take effect twice.
            if time.monotonic() + delay >= deadline:
                print(
                    f"error: request {properties.message_id} refused {attempt} times "
                    "(queue full); giving up",
                    file=sys.stderr,
                )
                return False
            print(
                f"nack (queue full), retrying in {delay:.1f}s with the same request id",
                file=sys.stderr,
            )
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        except pika.exceptions.UnroutableError:
            print(
                f"error: {args.prefix}.requests has no queue bound "
                "(is the topology declared?)",
                file=sys.stderr,
            )
            return False


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("course_id")
    p.add_argument("student_id")
    p.add_argument("--action", choices=["enroll", "drop"], default="enroll")
    p.add_argument(
        "--request-id",
        help="the request id (default: a new UUID); reuse one to retry safely",
    )
    p.add_argument(
        "--prefix",
        default=os.environ.get("SEATRUSH_PREFIX", "seatrush"),
        help="name prefix of the exchanges (default: $SEATRUSH_PREFIX or seatrush)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds to wait for the final answer (default 30)",
    )
    p.add_argument(
        "--until-promoted",
        action="store_true",
        help="after a waitlisted answer, wait for the promotion",
    )
    p.add_argument(
        "--batch",
        action="store_true",
        help="ask for batched answers (x-seatrush-batch)",
    )
    return p.parse_args()


if __name__ == "__main__":
    sys.exit(main())
