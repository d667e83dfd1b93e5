#!/usr/bin/env python3
"""Originate one call through dialerd and follow it to its end.

Takes the events stream's current last id, sends one ``originate`` (pub/sub
with a private ``reply_to``, or with ``--stream`` through the durable command
stream), follows ``<p>:events:stream`` from that id until the call's
``call.ended``, reads the call record, and prints ONE JSON line on stdout::

    {"call_id": ..., "instance": ..., "events": ["call.created", ...],
     "seqs": [...], "cause": ..., "gaps": [...], "duplicates_dropped": N,
     "resumed": bool, "record": {...}, "error": null}

Exit status 0 when the call's events run from ``call.created`` to
``call.ended`` with increasing ``seq`` from one ``(instance, boot)`` and no
``seq`` gap in that ``(instance, boot)`` while following; otherwise 1, with
the reasons on stderr (the JSON line is printed either way).

``--disconnect-after N`` closes the client's Redis connections after the
call's N-th event and sleeps ``--disconnect-secs`` before reading on from the
last id, to show that following resumes without losing or repeating events.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis  # noqa: E402

from dialer_client import (  # noqa: E402
    CommandFailed,
    DialerClient,
    EventFollower,
    NoResult,
    check_result,
    new_command_id,
)

PUBSUB_ATTEMPT_SECS = 5.0
"""How long one pub/sub attempt waits for the originate's result."""


@dataclass
class CallEvent:
    """The parts of one call event this script checks."""

    type: str
    seq: int | None
    instance: str | None
    boot: str | None
    stream_id: str
    cause: str | None


@dataclass
class Run:
    """What one run observed."""

    command_id: str
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    events: dict[str, list[CallEvent]] = field(default_factory=dict)
    resumed: bool = False

    @property
    def call_id(self) -> str:
        """The call id from the result; before it arrives, the command id
        (an originate's call id defaults to its command id)."""
        if self.result and isinstance(self.result.get("call_id"), str):
            return self.result["call_id"]
        return self.command_id

    def call_events(self) -> list[CallEvent]:
        return self.events.get(self.call_id, [])

    def ended(self) -> bool:
        return self.result is not None and any(e.type == "call.ended" for e in self.call_events())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0", help="Redis URL (default: %(default)s)")
    parser.add_argument("--prefix", default="dialer", help="dialerd's redis.prefix (default: %(default)s)")
    parser.add_argument("--account", required=True, help="the account to dial from")
    parser.add_argument("--to", required=True, help="SIP URI or bare number/user to dial")
    parser.add_argument("--instance", help="send the originate to this instance only")
    parser.add_argument(
        "--timeout-secs", type=float, default=60.0, help="give up when the call has not ended after this long (default: 60)"
    )
    parser.add_argument(
        "--disconnect-after",
        type=int,
        metavar="EVENTS",
        help="after the call's EVENTS-th event, close the Redis connections and pause, then resume from the last id",
    )
    parser.add_argument(
        "--disconnect-secs", type=float, default=3.0, help="pause length for --disconnect-after (default: 3)"
    )
    parser.add_argument(
        "--max-duration-secs",
        type=int,
        help="ask dialerd to end the call after this much talk time (args.max_duration_secs)",
    )
    parser.add_argument(
        "--stream",
        action="store_true",
        help="send the originate through the command stream (<p>:cmdq) and read its result from the events stream",
    )
    args = parser.parse_args(argv)
    if args.timeout_secs <= 0:
        parser.error("--timeout-secs must be positive")
    if args.disconnect_after is not None and args.disconnect_after < 1:
        parser.error("--disconnect-after must be at least 1")
    return args


def send_originate(client: DialerClient, args: argparse.Namespace, run: Run, deadline: float) -> None:
    """Send the originate; with pub/sub also wait for its result (resending
    with the same id while none arrives, as the contract advises)."""
    command_args = {"account": args.account, "to": args.to}
    if args.max_duration_secs is not None:
        command_args["max_duration_secs"] = args.max_duration_secs
    if args.stream:
        not_after_ms = int((time.time() + args.timeout_secs) * 1000)
        client.enqueue("originate", command_args, instance=args.instance, id=run.command_id, not_after_ms=not_after_ms)
        return
    remaining = deadline - time.monotonic()
    attempts = max(1, int(min(remaining, 30.0) // PUBSUB_ATTEMPT_SECS))
    reply = client.command(
        "originate",
        command_args,
        instance=args.instance,
        timeout=PUBSUB_ATTEMPT_SECS,
        id=run.command_id,
        attempts=attempts,
    )
    run.result = reply["result"]


def follow(client: DialerClient, args: argparse.Namespace, run: Run, follower: EventFollower) -> None:
    """Read events until the call has ended (or the follower times out)."""
    call_events_seen = 0
    reads_at_disconnect: int | None = None
    reconnects_before = 0
    for stream_id, event in follower:
        # Resumed: an entry came from a read made after a forced disconnect
        # or after the follower recovered from a connection error.
        if (reads_at_disconnect is not None and follower.reads > reads_at_disconnect) or (
            follower.reconnects > reconnects_before
        ):
            run.resumed = True
        kind = event.get("type")
        if kind == "command.result" and event.get("id") == run.command_id:
            if run.result is None:
                run.result = check_result(event)["result"]
        elif isinstance(kind, str) and kind.startswith("call.") and isinstance(event.get("call_id"), str):
            seq = event.get("seq")
            run.events.setdefault(event["call_id"], []).append(
                CallEvent(
                    type=kind,
                    seq=seq if isinstance(seq, int) else None,
                    instance=event.get("instance"),
                    boot=event.get("boot"),
                    stream_id=stream_id,
                    cause=event.get("cause"),
                )
            )
            if event["call_id"] == run.call_id:
                call_events_seen += 1
                if args.disconnect_after == call_events_seen and reads_at_disconnect is None:
                    print(
                        f"originate_and_follow: disconnecting after {call_events_seen} events "
                        f"(last id {follower.last_id}), pausing {args.disconnect_secs:g} s",
                        file=sys.stderr,
                    )
                    client.disconnect()
                    time.sleep(args.disconnect_secs)
                    reads_at_disconnect = follower.reads
                    reconnects_before = follower.reconnects
        if run.ended():
            return


def read_record(client: DialerClient, call_id: str, wait_for_end: bool) -> dict[str, str]:
    """HGETALL the call record; give dialerd a moment to write its final
    state if the event arrived first."""
    record = client.call_status(call_id)
    for _ in range(10):
        if not wait_for_end or record.get("state") == "ended":
            break
        time.sleep(0.1)
        record = client.call_status(call_id)
    return record


def verdict(run: Run, follower: EventFollower | None) -> tuple[list[str], list[dict[str, Any]]]:
    """The problems found, and the seq gaps that matter to this call."""
    problems: list[str] = []
    events = run.call_events()
    if run.error is not None:
        problems.append(f"originate failed: {run.error.get('code')}: {run.error.get('message')}")
    elif run.result is None:
        problems.append(f"no command.result for {run.command_id}")
    if not events and run.error is None:
        problems.append(f"no events for call {run.call_id}")
    if events and events[0].type != "call.created":
        problems.append(f"first event is {events[0].type}, not call.created")
    if events and events[-1].type != "call.ended":
        problems.append(f"call did not end (last event {events[-1].type})" if run.result else "call did not end")
    keys = {(e.instance, e.boot) for e in events}
    if len(keys) > 1:
        problems.append(f"events come from several (instance, boot): {sorted(map(str, keys))}")
    seqs = [e.seq for e in events]
    if any(s is None for s in seqs):
        problems.append("an event has no integer seq")
    elif any(b <= a for a, b in zip(seqs, seqs[1:])):
        problems.append(f"seq does not increase: {seqs}")
    gaps: list[dict[str, Any]] = []
    if follower is not None:
        gaps = [g.as_dict() for g in follower.gaps if (g.instance, g.boot) in keys]
    if gaps:
        problems.append(f"seq gaps: {json.dumps(gaps)}")
    return problems, gaps


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="originate_and_follow: %(message)s")
    deadline = time.monotonic() + args.timeout_secs
    client = DialerClient(args.url, args.prefix)
    run = Run(command_id=new_command_id("originate"))
    follower: EventFollower | None = None
    problems: list[str] = []
    try:
        start_id = client.stream_last_id()
        try:
            send_originate(client, args, run, deadline)
            follower = client.follow_events(start_id, block_ms=1000, timeout=max(0.0, deadline - time.monotonic()))
            follow(client, args, run, follower)
        except CommandFailed as exc:
            run.error = {"code": exc.code, "message": exc.message, "retryable": exc.retryable}
        except NoResult as exc:
            problems.append(str(exc))
        record = read_record(client, run.call_id, wait_for_end=run.ended()) if run.error is None else {}
    except redis.RedisError as exc:
        print(f"originate_and_follow: Redis error: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()

    found, gaps = verdict(run, follower)
    if not problems:
        problems = found
    events = run.call_events()
    ended = [e for e in events if e.type == "call.ended"]
    instance = (run.result or {}).get("instance") or (events[0].instance if events else None)
    report = {
        "call_id": run.call_id if run.result or events else None,
        "instance": instance,
        "events": [e.type for e in events],
        "seqs": [e.seq for e in events],
        "cause": ended[-1].cause if ended else None,
        "gaps": gaps,
        "duplicates_dropped": follower.duplicates_dropped if follower else 0,
        "resumed": run.resumed,
        "record": record,
        "error": run.error,
    }
    print(json.dumps(report, separators=(",", ":")))
    if problems:
        print("originate_and_follow: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
