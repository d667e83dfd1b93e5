"""Reference client for dialerd's Redis control channel (contract v1).

dialerd is driven only through Redis: commands go in on pub/sub channels or
streams, results and events come out on pub/sub and on the stream
``<p>:events:stream``, and every call has a record in the hash
``<p>:call:<call id>``. The contract is ``docs/control-channel.md``; this module
is a small, dependency-light implementation of it (Python 3.11, redis-py).

Example::

    from dialer_client import DialerClient

    client = DialerClient("redis://127.0.0.1:6379/0")
    start = client.stream_last_id()              # before sending anything
    call = client.originate("ucm-2001", "sip:1002@pbx.example.com")
    follower = client.follow_events(start)
    for stream_id, event in follower:
        if event.get("call_id") == call["call_id"]:
            print(event["type"], event.get("seq"))
            if event["type"] == "call.ended":
                break
    assert not follower.gaps
    print(client.call_status(call["call_id"]))

Nothing here keeps module-level state: every piece of state lives on a
``DialerClient`` or an ``EventFollower``.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Iterator, NamedTuple

import redis

__all__ = [
    "CONTRACT_VERSION",
    "CommandFailed",
    "DialerClient",
    "DialerError",
    "Enqueued",
    "EventFollower",
    "Gap",
    "NoResult",
    "check_result",
    "new_command_id",
]

log = logging.getLogger(__name__)

CONTRACT_VERSION = 1
"""The ``v`` this client sends and understands."""

MAX_COMMAND_BYTES = 64 * 1024
"""dialerd refuses larger commands with ``too_large``."""

_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_MAX_REPLY_TO = 200


class DialerError(Exception):
    """Base class of the errors this module raises (besides redis-py's own)."""


class CommandFailed(DialerError):
    """A ``command.result`` arrived with ``"ok": false``.

    Attributes:
        code: the contract's error code (``unknown_account``, ``capacity``, ...).
        message: dialerd's human-readable explanation.
        retryable: whether sending the command again may succeed.
        result: the whole ``command.result`` object.
    """

    def __init__(self, result: dict[str, Any]) -> None:
        error = result.get("error") or {}
        self.code: str = str(error.get("code", "unknown"))
        self.message: str = str(error.get("message", ""))
        self.retryable: bool = bool(error.get("retryable", False))
        self.result: dict[str, Any] = result
        super().__init__(
            f"{result.get('command', '?')} {result.get('id', '?')} failed: "
            f"{self.code}: {self.message} (retryable: {self.retryable})"
        )


class NoResult(DialerError):
    """No ``command.result`` arrived in time.

    With pub/sub this is the expected symptom of a lost command (no instance
    was subscribed): resend it with the **same id**, which is safe because
    dialerd answers a repeated id instead of executing it again.

    Attributes:
        command_id: the id of the command that got no answer.
        timeout: how long was waited, in seconds.
        receivers: for pub/sub, how many subscribers the last PUBLISH reached
            (0 means no dialerd instance listens on that channel); ``None`` for
            streams.
    """

    def __init__(self, command_id: str, timeout: float, receivers: int | None = None) -> None:
        self.command_id = command_id
        self.timeout = timeout
        self.receivers = receivers
        if receivers == 0:
            why = "no subscriber on the command channel: it was lost (is dialerd running?)"
        else:
            why = f"none within {timeout:g} s"
        super().__init__(f"no result for command {command_id}: {why}")


@dataclass
class Gap:
    """Missing ``seq`` numbers in the events of one ``(instance, boot)``.

    ``first`` to ``last`` (inclusive) were never seen; ``stream_id`` is the
    entry at which the gap was noticed. A gap shrinks (or disappears from
    ``EventFollower.gaps``) if a missing event turns up later.
    """

    instance: str
    boot: str
    first: int
    last: int
    stream_id: str

    @property
    def count(self) -> int:
        """How many events are missing."""
        return self.last - self.first + 1

    def as_dict(self) -> dict[str, Any]:
        """The gap as a JSON-friendly dict."""
        return asdict(self)


class Enqueued(NamedTuple):
    """What ``DialerClient.enqueue`` added: the command id and the entry id."""

    command_id: str
    entry_id: str


def new_command_id(prefix: str = "py") -> str:
    """A fresh command id that satisfies the contract's id alphabet."""
    return f"{prefix}-{uuid.uuid4().hex}"


def check_result(result: dict[str, Any]) -> dict[str, Any]:
    """Return ``result`` if it is a successful ``command.result``.

    Raises:
        CommandFailed: when ``ok`` is not true.
    """
    if result.get("ok") is not True:
        raise CommandFailed(result)
    return result


def _now_ms() -> int:
    return int(time.time() * 1000)


class DialerClient:
    """A connection to dialerd's control channel.

    Args:
        url: a redis-py URL (``redis://``, ``rediss://``, ``unix://``), with
            credentials in it if the server needs them.
        prefix: ``redis.prefix`` of the dialerd deployment.
        socket_timeout: seconds before a Redis request counts as lost
            (``redis.TimeoutError``). Blocking reads must block for less.
        connect_timeout: seconds allowed for a TCP connect.

    The underlying ``redis.Redis`` (``decode_responses=True``) is available as
    ``.redis`` for anything this class does not wrap.
    """

    def __init__(
        self,
        url: str,
        prefix: str = "dialer",
        *,
        socket_timeout: float = 10.0,
        connect_timeout: float = 5.0,
    ) -> None:
        if not prefix:
            raise ValueError("prefix must not be empty")
        self.prefix = prefix
        self.socket_timeout = socket_timeout
        self.redis: redis.Redis = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
        )

    # ----------------------------------------------------------------- names

    def command_channel(self, instance: str | None = None) -> str:
        """``<p>:cmd``, or ``<p>:<i>:cmd`` for one instance."""
        return self._scoped("cmd", instance)

    def command_stream(self, instance: str | None = None) -> str:
        """``<p>:cmdq``, or ``<p>:<i>:cmdq`` for one instance."""
        return self._scoped("cmdq", instance)

    @property
    def events_channel(self) -> str:
        """``<p>:events``: events and results of commands without ``reply_to``."""
        return f"{self.prefix}:events"

    @property
    def events_stream(self) -> str:
        """``<p>:events:stream``: every event and every result."""
        return f"{self.prefix}:events:stream"

    def call_key(self, call_id: str) -> str:
        """``<p>:call:<call id>``: the call record hash."""
        return f"{self.prefix}:call:{call_id}"

    def new_reply_channel(self) -> str:
        """A private ``<p>:reply:<uuid>`` channel for one command's result."""
        return f"{self.prefix}:reply:{uuid.uuid4().hex}"

    def _scoped(self, name: str, instance: str | None) -> str:
        if instance is None:
            return f"{self.prefix}:{name}"
        if not instance:
            raise ValueError("instance must not be empty (use None for any instance)")
        return f"{self.prefix}:{instance}:{name}"

    # -------------------------------------------------------------- commands

    def build_command(
        self,
        type: str,
        args: dict[str, Any] | None = None,
        *,
        id: str | None = None,
        reply_to: str | None = None,
        not_after_ms: int | None = None,
    ) -> dict[str, Any]:
        """Build a command object ``{"v": 1, "id", "type", "args"}``.

        ``reply_to`` and ``not_after`` (Unix milliseconds) are added only when
        given. The checks here mirror the contract so that mistakes show up
        as a ``ValueError`` before anything is sent.
        """
        command_id = id if id is not None else new_command_id()
        if not _ID_RE.match(command_id):
            raise ValueError(f"bad command id {command_id!r}: 1 to 128 of A-Z a-z 0-9 . _ : -")
        if not isinstance(type, str) or not type:
            raise ValueError("command type must be a non-empty string")
        if args is not None and not isinstance(args, dict):
            raise ValueError("args must be a dict")
        command: dict[str, Any] = {"v": CONTRACT_VERSION, "id": command_id, "type": type, "args": args or {}}
        if reply_to is not None:
            if not reply_to.startswith(f"{self.prefix}:") or len(reply_to) > _MAX_REPLY_TO:
                raise ValueError(f"reply_to must start with {self.prefix!r}: and be at most {_MAX_REPLY_TO} characters")
            command["reply_to"] = reply_to
        if not_after_ms is not None:
            if isinstance(not_after_ms, bool) or not isinstance(not_after_ms, int):
                raise ValueError("not_after_ms must be an integer (Unix milliseconds)")
            command["not_after"] = not_after_ms
        return command

    @staticmethod
    def encode_command(command: dict[str, Any]) -> str:
        """Serialize a command; refuses one larger than the 64 KiB limit."""
        payload = json.dumps(command, separators=(",", ":"), ensure_ascii=False)
        if len(payload.encode("utf-8")) > MAX_COMMAND_BYTES:
            raise ValueError(f"command is larger than {MAX_COMMAND_BYTES} bytes")
        return payload

    def command(
        self,
        type: str,
        args: dict[str, Any] | None = None,
        instance: str | None = None,
        timeout: float = 5.0,
        id: str | None = None,
        *,
        not_after_ms: int | None = None,
        attempts: int = 1,
    ) -> dict[str, Any]:
        """Send a command over pub/sub and wait for its ``command.result``.

        The command goes to ``<p>:cmd`` (or ``<p>:<instance>:cmd``) with a
        private ``reply_to`` channel, which is subscribed (and the
        subscription confirmed) before the command is published.

        Args:
            type: the command type (``ping``, ``originate``, ...).
            args: the type's arguments.
            instance: send to this instance only.
            timeout: seconds to wait for the result, per attempt.
            id: the command id (default: a fresh one). Reuse an id to resend.
            not_after_ms: optional Unix-ms deadline after which dialerd must
                not execute the command.
            attempts: how many times to send it (always with the same id)
                while no result arrives or the answer is ``in_progress``.

        Returns:
            The parsed ``command.result`` (``result["result"]`` holds the
            type's result). On the broadcast channel the first instance to
            answer wins; see ``broadcast`` to collect every answer.

        Raises:
            CommandFailed: the result has ``ok: false``.
            NoResult: no result within ``timeout`` on the last attempt.
            ValueError: the command breaks the contract's rules.
            redis.RedisError: Redis itself failed.
        """
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        reply_to = self.new_reply_channel()
        command = self.build_command(type, args, id=id, reply_to=reply_to, not_after_ms=not_after_ms)
        payload = self.encode_command(command)
        channel = self.command_channel(instance)
        pubsub = self.redis.pubsub()
        try:
            self._subscribe(pubsub, reply_to, timeout)
            for attempt in range(1, attempts + 1):
                last = attempt == attempts
                receivers = self.redis.publish(channel, payload)
                if receivers == 0:
                    # Nobody listens: the command is already lost. Waiting
                    # for a result is pointless; pause briefly and resend.
                    if last:
                        raise NoResult(command["id"], 0.0, receivers=0)
                    time.sleep(min(timeout, 1.0))
                    continue
                results = self._collect(pubsub, command["id"], timeout, want=1)
                if not results:
                    if last:
                        raise NoResult(command["id"], timeout, receivers=receivers)
                    continue
                result = results[0]
                error = result.get("error") or {}
                if result.get("ok") is not True and error.get("code") == "in_progress" and not last:
                    time.sleep(min(timeout, 1.0))
                    continue
                return check_result(result)
            raise AssertionError("unreachable")
        finally:
            pubsub.close()

    def broadcast(self, type: str, args: dict[str, Any] | None = None, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Send an instance-scope command (``ping``, ``status``, ``calls``,
        ``drain``, ``sip_trace``) to every instance on ``<p>:cmd``.

        Returns every ``command.result`` received within ``timeout`` (at most
        one per subscriber the PUBLISH reached), failed ones included: check
        each with ``check_result``.
        """
        reply_to = self.new_reply_channel()
        command = self.build_command(type, args, reply_to=reply_to)
        payload = self.encode_command(command)
        pubsub = self.redis.pubsub()
        try:
            self._subscribe(pubsub, reply_to, timeout)
            receivers = self.redis.publish(self.command_channel(), payload)
            if receivers == 0:
                return []
            return self._collect(pubsub, command["id"], timeout, want=receivers)
        finally:
            pubsub.close()

    def _subscribe(self, pubsub: redis.client.PubSub, channel: str, timeout: float) -> None:
        """Subscribe and wait until Redis confirms it, so nothing is missed."""
        pubsub.subscribe(channel)
        deadline = time.monotonic() + max(timeout, 1.0)
        while (remaining := deadline - time.monotonic()) > 0:
            message = pubsub.get_message(timeout=remaining)
            if message and message.get("type") == "subscribe" and message.get("channel") == channel:
                return
        raise redis.TimeoutError(f"subscription to {channel} not confirmed")

    @staticmethod
    def _collect(pubsub: redis.client.PubSub, command_id: str, timeout: float, want: int) -> list[dict[str, Any]]:
        """Read ``command.result`` messages for ``command_id`` until ``want``
        have arrived or ``timeout`` seconds have passed."""
        results: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(results) < want and (remaining := deadline - time.monotonic()) > 0:
            message = pubsub.get_message(timeout=remaining)
            if not message or message.get("type") != "message":
                continue
            try:
                result = json.loads(message["data"])
            except (TypeError, ValueError):
                log.warning("ignoring a non-JSON message on %s", message.get("channel"))
                continue
            if isinstance(result, dict) and result.get("type") == "command.result" and result.get("id") == command_id:
                results.append(result)
        return results

    def enqueue(
        self,
        type: str,
        args: dict[str, Any] | None = None,
        instance: str | None = None,
        id: str | None = None,
        not_after_ms: int | None = None,
    ) -> Enqueued:
        """Add a durable command to ``<p>:cmdq`` (or ``<p>:<instance>:cmdq``).

        The entry's field ``cmd`` holds the command (without ``reply_to``), so
        its result appears on ``<p>:events`` and ``<p>:events:stream``: read
        it with ``wait_result`` or ``follow_events``. Give originates a
        ``not_after_ms``: the contract recommends always saying how late a
        call is still wanted.
        """
        command = self.build_command(type, args, id=id, not_after_ms=not_after_ms)
        entry_id = self.redis.xadd(self.command_stream(instance), {"cmd": self.encode_command(command)})
        return Enqueued(command["id"], entry_id)

    def wait_result(self, command_id: str, after_id: str = "0", timeout: float = 30.0) -> dict[str, Any]:
        """Wait for the result of ``command_id`` on the events stream.

        ``after_id`` is a stream id taken before the command was sent (see
        ``stream_last_id``). Raises ``CommandFailed`` or ``NoResult`` like
        ``command``.
        """
        follower = self.follow_events(after_id, timeout=timeout)
        for _stream_id, event in follower:
            if event.get("type") == "command.result" and event.get("id") == command_id:
                return check_result(event)
        raise NoResult(command_id, timeout)

    # ----------------------------------------------------- typed shorthands

    def originate(
        self,
        account: str,
        to: str,
        *,
        instance: str | None = None,
        timeout: float = 5.0,
        id: str | None = None,
        attempts: int = 1,
        **options: Any,
    ) -> dict[str, Any]:
        """Dial ``to`` from ``account`` (pub/sub) and return ``{"call_id", "instance"}``.

        ``options`` are the optional originate args of the contract
        (``display``, ``headers``, ``call_id``, ``ring_timeout_secs``,
        ``max_duration_secs``, ``bridge_to``, ``force``). ``from`` is a Python
        keyword: pass it as ``from_``; a trailing underscore is dropped from
        every option name.
        """
        args: dict[str, Any] = {"account": account, "to": to}
        for name, value in options.items():
            args[name.removesuffix("_")] = value
        reply = self.command("originate", args, instance=instance, timeout=timeout, id=id, attempts=attempts)
        return reply["result"]

    def hangup(self, call_id: str, *, instance: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
        """Hang up a call; returns ``{"call_id", "instance"}``."""
        return self.command("hangup", {"call_id": call_id}, instance=instance, timeout=timeout)["result"]

    def ping(self, instance: str | None = None, timeout: float = 5.0) -> dict[str, Any]:
        """Ping one instance (or whichever answers first); returns the whole result."""
        return self.command("ping", instance=instance, timeout=timeout)

    # ------------------------------------------------------- records, events

    def call_status(self, call_id: str) -> dict[str, str]:
        """The call record ``<p>:call:<call_id>`` as stored (``HGETALL``).

        A direct key lookup: it works while no dialerd runs. Values are the
        strings dialerd wrote; the dict is empty when there is no record
        (never created, or expired).
        """
        return self.redis.hgetall(self.call_key(call_id))

    def stream_last_id(self, stream: str | None = None) -> str:
        """The id of the newest entry of a stream (default: the events
        stream), or ``"0"`` when the stream does not exist or is empty.

        Take it before sending a command, then follow from it: nothing the
        command causes can be missed.
        """
        name = stream or self.events_stream
        try:
            info = self.redis.xinfo_stream(name)
            last = info.get("last-generated-id")
            if isinstance(last, str) and last:
                return last
        except redis.ResponseError:
            pass  # no such key (or XINFO not allowed): fall back below
        newest = self.redis.xrevrange(name, count=1)
        return newest[0][0] if newest else "0"

    def follow_events(
        self,
        last_id: str = "$",
        block_ms: int = 1000,
        *,
        timeout: float | None = None,
        count: int = 100,
        max_backoff: float = 5.0,
    ) -> EventFollower:
        """Iterate over ``<p>:events:stream`` after ``last_id``.

        Returns an ``EventFollower``: iterate it for ``(stream_id, event)``
        pairs; its ``gaps``, ``duplicates_dropped`` and ``last_id``
        attributes tell what happened. It survives Redis outages and
        deduplicates (see ``EventFollower``).

        Args:
            last_id: start after this entry id; ``"$"`` means "from now" and
                is pinned to a concrete id on the first read; ``"0"`` reads
                everything still in the stream.
            block_ms: how long one ``XREAD`` blocks; must be shorter than
                ``socket_timeout``.
            timeout: stop iterating after this many seconds (``None``: never).
            count: at most this many entries per ``XREAD``.
            max_backoff: longest pause between reconnection attempts.
        """
        if block_ms < 1:
            raise ValueError("block_ms must be at least 1 (0 would block forever)")
        if self.socket_timeout is not None and block_ms + 1000 > self.socket_timeout * 1000:
            raise ValueError("block_ms must be at least 1 s shorter than socket_timeout")
        return EventFollower(self, last_id, block_ms, timeout=timeout, count=count, max_backoff=max_backoff)

    # ----------------------------------------------------------- connection

    def disconnect(self) -> None:
        """Close every pooled Redis connection; the next request reconnects."""
        self.redis.connection_pool.disconnect()

    def close(self) -> None:
        """Release the client's connections."""
        self.disconnect()

    def __enter__(self) -> DialerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventFollower:
    """An iterator over ``<p>:events:stream`` yielding ``(stream_id, event)``.

    * **Resumes.** A ``redis.ConnectionError`` or ``redis.TimeoutError`` is
      caught; the follower drops its connections, waits (0.2 s doubling up to
      ``max_backoff``, +-20 % jitter), reconnects and reads on from
      ``last_id``, the last entry it handed out, so no entry still in the
      stream is missed.
    * **Deduplicates.** Delivery is at least once: an event already seen, by
      ``(instance, boot, seq)``, and a result already seen, by its ``id``
      (which also drops ``"duplicate": true`` re-answers), are not yielded
      again; they are counted in ``duplicates_dropped``.
    * **Detects gaps.** Within one ``(instance, boot)``, ``seq`` must grow by
      1. Missing numbers are recorded as ``Gap`` objects in ``gaps`` (assert
      ``not follower.gaps``). The first event seen of an ``(instance, boot)``
      sets the baseline, except ``daemon.started``, which must be seq 1.

    Entries whose ``event`` field is not a JSON object are skipped and counted
    in ``malformed``. ``reconnects`` counts recoveries; ``reads`` counts
    successful ``XREAD`` calls.
    """

    _RESULT_IDS_KEPT = 100_000

    def __init__(
        self,
        client: DialerClient,
        last_id: str,
        block_ms: int,
        *,
        timeout: float | None,
        count: int,
        max_backoff: float,
    ) -> None:
        self.last_id: str = last_id
        self.gaps: list[Gap] = []
        self.duplicates_dropped: int = 0
        self.late_events: int = 0
        self.malformed: int = 0
        self.reconnects: int = 0
        self.reads: int = 0
        self._client = client
        self._block_ms = block_ms
        self._timeout = timeout
        self._count = count
        self._max_backoff = max_backoff
        self._high: dict[tuple[str, str], int] = {}
        self._result_ids: OrderedDict[str, None] = OrderedDict()
        self._gen = self._run()

    def __iter__(self) -> EventFollower:
        return self

    def __next__(self) -> tuple[str, dict[str, Any]]:
        return next(self._gen)

    def close(self) -> None:
        """Stop the iteration."""
        self._gen.close()

    def _run(self) -> Iterator[tuple[str, dict[str, Any]]]:
        client = self._client
        stream = client.events_stream
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        backoff = 0.2
        while True:
            block_ms = self._block_ms
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                block_ms = max(1, min(block_ms, int(remaining * 1000)))
            try:
                if self.last_id == "$":
                    # Pin "now" to a concrete id, so that a reconnection
                    # before the first entry cannot skip anything.
                    self.last_id = client.stream_last_id()
                reply = client.redis.xread({stream: self.last_id}, count=self._count, block=block_ms)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self.reconnects += 1
                pause = backoff * random.uniform(0.8, 1.2)
                if deadline is not None:
                    pause = max(0.0, min(pause, deadline - time.monotonic()))
                log.warning("events stream read failed (%s); resuming after %s in %.2f s", exc, self.last_id, pause)
                try:
                    client.disconnect()
                except redis.RedisError:
                    pass
                time.sleep(pause)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            backoff = 0.2
            self.reads += 1
            # RESP2: [[stream, entries]]; RESP3: {stream: [entries]}.
            batches = reply.items() if isinstance(reply, dict) else (reply or [])
            for _name, entries in batches:
                for entry in entries:
                    entry_id, fields = entry[0], entry[1]
                    self.last_id = entry_id
                    event = self._accept(entry_id, fields or {})
                    if event is not None:
                        yield entry_id, event

    def _accept(self, entry_id: str, fields: dict[str, str]) -> dict[str, Any] | None:
        """Parse one entry; return the event, or ``None`` to skip it."""
        try:
            event = json.loads(fields["event"])
        except (KeyError, TypeError, ValueError):
            event = None
        if not isinstance(event, dict):
            self.malformed += 1
            log.warning("skipping malformed events stream entry %s", entry_id)
            return None

        if event.get("type") == "command.result":
            result_id = event.get("id")
            if not isinstance(result_id, str):
                return event  # an unreadable command's result: nothing to dedup on
            if result_id in self._result_ids:
                self.duplicates_dropped += 1
                return None
            self._result_ids[result_id] = None
            if len(self._result_ids) > self._RESULT_IDS_KEPT:
                self._result_ids.popitem(last=False)
            return event

        instance, boot, seq = event.get("instance"), event.get("boot"), event.get("seq")
        if not isinstance(instance, str) or not isinstance(boot, str) or not isinstance(seq, int) or isinstance(seq, bool):
            return event  # not identifiable: pass it on as is
        key = (instance, boot)
        high = self._high.get(key)
        if high is None:
            if event.get("type") == "daemon.started" and seq > 1:
                self.gaps.append(Gap(instance, boot, 1, seq - 1, entry_id))
            self._high[key] = seq
            return event
        if seq > high:
            if seq > high + 1:
                self.gaps.append(Gap(instance, boot, high + 1, seq - 1, entry_id))
            self._high[key] = seq
            return event
        if self._fill(key, seq):
            self.late_events += 1
            return event
        self.duplicates_dropped += 1
        return None

    def _fill(self, key: tuple[str, str], seq: int) -> bool:
        """If ``seq`` lies in a recorded gap of ``key``, take it out of it."""
        for index, gap in enumerate(self.gaps):
            if (gap.instance, gap.boot) != key or not gap.first <= seq <= gap.last:
                continue
            if gap.first == gap.last:
                del self.gaps[index]
            elif seq == gap.first:
                gap.first += 1
            elif seq == gap.last:
                gap.last -= 1
            else:
                self.gaps.insert(index + 1, Gap(gap.instance, gap.boot, seq + 1, gap.last, gap.stream_id))
                gap.last = seq - 1
            return True
        return False
