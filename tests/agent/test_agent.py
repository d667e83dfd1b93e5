#!/usr/bin/env python3
"""A scripted voice agent (WebSocket *server*) for dialerd's integration tests.

dialerd connects to it as a WebSocket client and speaks the Twilio Media
Streams protocol (see twilio-media-streams.schema.json next to this file).
What the agent does is chosen with --mode; everything it receives is logged.

Usage (in the ~/.cache/dialerd-agent virtualenv, or any Python >= 3.8 with
`websockets` >= 10, plus `jsonschema` if --schema is used):

    python tests/agent/test_agent.py --port 0 --mode echo --log /tmp/agent.jsonl \
        [--host 127.0.0.1] [--schema tests/agent/twilio-media-streams.schema.json] \
        [--tls-cert cert.pem --tls-key key.pem]

Once it is listening it prints one line, `listening PORT`, on stdout (and
nothing else there afterwards). It serves any number of connections, one after
another or at once, until SIGTERM/SIGINT; each connection runs the mode on its
own. Every path is accepted.

Modes:
  echo       every received `media` is sent straight back as
             {"event":"media","streamSid":SID,"media":{"payload":SAME}};
             every binary frame (dialerd's raw L16 protocol) as it is.
  marks      after `start`: 5 media of 200 ms (1600 bytes) of a 440 Hz tone,
             each followed by a mark m1..m5, all sent at once.
  clear      after `start`: 10 s of tone in one media (80000 bytes), a mark
             `before_clear`, 500 ms later a `clear`.
  refuse     the WebSocket handshake is answered with HTTP 403.
  silent     receives and logs, never sends anything.
  burst      after `start`: 60 s of tone as 3000 media of 20 ms (160 bytes),
             as fast as possible; nothing else.
  vanish     after the 50th received media: the TCP connection is reset
             (SO_LINGER 0 + abort, no close frame); the server keeps listening.
  malformed  after `start`: the text `{not json`, a message with an unknown
             event, a media whose payload is not base64; then silent.
  huge       after `start`: one ~10 MiB text frame (a media message), then silent.
  hangup     2 s after the connection opens: a normal close (code 1000).

Log (--log FILE): one JSON object per line, flushed line by line. Every line
has "_t" (receive or event time, integer ms since the Unix epoch) and "_c"
(connection number, from 1). Lines are:
  {"_open": {"path", "peer", "headers"}}      handshake accepted
  {"_refused": {"path", "peer", "status": 403}} handshake refused (mode refuse)
  <the received JSON message itself>          each received JSON text message
  {"_nonjson": TEXT}                          received text that is not JSON
                                              (truncated to 1000 characters)
  {"_json": VALUE}                            received JSON that is not an object
  {"_binary": LENGTH}                         each received binary frame
  {"_invalid": "..."}                         (with --schema) the message just
                                              logged breaks the schema
  {"_sent": KIND, ...}                        what the agent sent (KIND: media,
                                              mark, clear, raw, close, reset)
  {"_mark_echo": NAME, "_ms_after_sent": N, ...}  a received mark echoing one
                                              the agent sent (marks, clear); in
                                              mode clear also "_ms_after_clear"
                                              (null if it came before the clear)
  {"_close": CODE, "rcvd": CODE|null, "sent": CODE|null, "reason": "..."}
                                              connection closed; CODE is the
                                              close code (1006 when no close
                                              frame was received), rcvd/sent are
                                              the codes of the close frames
                                              received/sent, null if none.

The tone is a 440 Hz sine at -6 dBFS, 8000 Hz, encoded to G.711 mu-law by the
code below (no audioop, which Python 3.13 removed).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import signal
import socket
import ssl
import struct
import sys
import time
from http import HTTPStatus

import websockets

try:  # websockets >= 13: the new asyncio implementation
    from websockets.asyncio.server import serve as _new_serve
except ImportError:  # websockets 10.x - 12.x: the legacy implementation
    _new_serve = None

from websockets.exceptions import ConnectionClosed

MODES = (
    "echo",
    "marks",
    "clear",
    "refuse",
    "silent",
    "burst",
    "vanish",
    "malformed",
    "huge",
    "hangup",
)

SAMPLE_RATE = 8000
TONE_HZ = 440
HUGE_FRAME_BYTES = 10 * 1024 * 1024


# ---------------------------------------------------------------------------
# Audio: G.711 mu-law encoder and a 440 Hz tone
# ---------------------------------------------------------------------------

_ULAW_BIAS = 0x84
# Segment end points of the 14-bit magnitude (Sun/CCITT g711.c, seg_uend).
_ULAW_SEG_END = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)


def linear_to_ulaw(sample: int) -> int:
    """Encode one signed 16-bit PCM sample as a G.711 mu-law byte.

    Same result as the reference g711.c linear2ulaw (and audioop.lin2ulaw).
    """
    value = sample >> 2  # 14-bit, arithmetic shift as in g711.c
    if value < 0:
        value, mask = -value, 0x7F
    else:
        mask = 0xFF
    if value > 8159:  # CLIP
        value = 8159
    value += _ULAW_BIAS >> 2
    for seg, end in enumerate(_ULAW_SEG_END):
        if value <= end:
            break
    else:
        return 0x7F ^ mask
    return ((seg << 4) | ((value >> (seg + 1)) & 0x0F)) ^ mask


def ulaw_to_linear(byte: int) -> int:
    """Decode one G.711 mu-law byte to a signed 16-bit PCM sample."""
    byte = ~byte & 0xFF
    exponent = (byte >> 4) & 0x07
    mantissa = byte & 0x0F
    magnitude = (((mantissa << 3) + _ULAW_BIAS) << exponent) - _ULAW_BIAS
    return -magnitude if byte & 0x80 else magnitude


# 440 Hz repeats exactly every 200 samples at 8000 Hz (11 cycles); every chunk
# size used here (160, 1600, 80000 bytes) tiles it, so the phase is continuous.
_TONE_PERIOD = SAMPLE_RATE // math.gcd(SAMPLE_RATE, TONE_HZ)
_TONE_CYCLE = bytes(
    linear_to_ulaw(int(round(16384 * math.sin(2 * math.pi * TONE_HZ * n / SAMPLE_RATE))))
    for n in range(_TONE_PERIOD)
)


def tone(nbytes: int, offset: int = 0) -> bytes:
    """`nbytes` samples (= bytes) of mu-law tone, starting at sample `offset`."""
    start = offset % _TONE_PERIOD
    reps = (start + nbytes) // _TONE_PERIOD + 1
    return (_TONE_CYCLE * reps)[start : start + nbytes]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# ---------------------------------------------------------------------------
# Log
# ---------------------------------------------------------------------------


class Log:
    def __init__(self, path: str | None):
        if path is None:
            self._f = None
        elif path == "-":
            self._f = sys.stderr
        else:
            self._f = open(path, "w", encoding="utf-8")

    def write(self, conn: int, obj: dict, t: int | None = None) -> None:
        if self._f is None:
            return
        line = dict(obj)
        line["_t"] = now_ms() if t is None else t
        line["_c"] = conn
        self._f.write(json.dumps(line, separators=(",", ":")) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None and self._f is not sys.stderr:
            self._f.close()


# ---------------------------------------------------------------------------
# Schema validation (optional)
# ---------------------------------------------------------------------------


class SchemaCheck:
    def __init__(self, path: str):
        import jsonschema  # only needed with --schema

        with open(path, encoding="utf-8") as f:
            schema = json.load(f)
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        cls.check_schema(schema)
        self._validator = cls(schema)

    @staticmethod
    def _short(text: str, limit: int = 300) -> str:
        return text if len(text) <= limit else text[:limit] + "..."

    def _describe(self, err) -> list[str]:
        # For the top-level oneOf, report only the errors of the branch whose
        # `event` const matched, rather than "is not valid under any of ...".
        if err.validator == "oneOf" and err.context:
            branches: dict[int, list] = {}
            for sub in err.context:
                branches.setdefault(sub.relative_schema_path[0], []).append(sub)
            matching = [
                subs
                for subs in branches.values()
                if not any(list(s.path) == ["event"] for s in subs)
                and not any(s.validator == "required" and "'event'" in s.message for s in subs)
            ]
            if len(matching) == 1:
                out = []
                for sub in matching[0]:
                    out.extend(self._describe(sub))
                return out
            if not matching and len(branches) == len(err.validator_value):
                return ["event: not one of the documented events"]
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        return [f"{where}: {self._short(err.message)}"]

    def errors(self, instance) -> list[str]:
        out: list[str] = []
        for err in self._validator.iter_errors(instance):
            out.extend(self._describe(err))
        return sorted(set(out))


# ---------------------------------------------------------------------------
# Per-connection behaviour
# ---------------------------------------------------------------------------


class Session:
    def __init__(self, agent: "Agent", ws, conn: int):
        self.agent = agent
        self.ws = ws
        self.conn = conn
        self.mode = agent.mode
        self.stream_sid: str | None = None
        self.media_count = 0
        self.mark_sent_at: dict[str, int] = {}
        self.clear_sent_at: int | None = None
        self.tasks: list[asyncio.Task] = []
        self.vanished = False

    # -- helpers ------------------------------------------------------------

    def log(self, obj: dict, t: int | None = None) -> None:
        self.agent.log.write(self.conn, obj, t)

    def spawn(self, coro) -> None:
        self.tasks.append(asyncio.ensure_future(coro))

    async def send_json(self, obj: dict) -> None:
        await self.ws.send(json.dumps(obj, separators=(",", ":")))

    async def send_media(self, audio: bytes, log: bool = True) -> None:
        await self.send_json(
            {"event": "media", "streamSid": self.stream_sid, "media": {"payload": b64(audio)}}
        )
        if log:
            self.log({"_sent": "media", "bytes": len(audio)})

    async def send_mark(self, name: str) -> None:
        await self.send_json({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})
        self.mark_sent_at[name] = now_ms()
        self.log({"_sent": "mark", "name": name})

    async def send_clear(self) -> None:
        await self.send_json({"event": "clear", "streamSid": self.stream_sid})
        self.clear_sent_at = now_ms()
        self.log({"_sent": "clear"})

    # -- main loop ------------------------------------------------------------

    async def run(self) -> None:
        self.log({"_open": self.agent.describe_request(self.ws)})
        if self.mode == "hangup":
            self.spawn(self.do_hangup())
        try:
            async for message in self.ws:
                await self.on_message(message)
        except ConnectionClosed:
            pass
        finally:
            for task in self.tasks:
                task.cancel()
            for task in self.tasks:
                try:
                    await task
                except (asyncio.CancelledError, ConnectionClosed):
                    pass
                except Exception as exc:  # report, do not kill the server
                    self.log({"_error": repr(exc)})
            self.log(self.agent.describe_close(self.ws))

    async def on_message(self, message) -> None:
        t = now_ms()
        if isinstance(message, (bytes, bytearray, memoryview)):
            self.log({"_binary": len(message)}, t)
            if self.agent.schema is not None:
                self.log({"_invalid": "binary frame (the protocol uses JSON text frames)"}, t)
            if self.mode == "echo":
                # dialerd's raw L16 protocol: audio is binary; echo it as is.
                await self.ws.send(bytes(message))
            return
        try:
            msg = json.loads(message)
        except ValueError as exc:
            self.log({"_nonjson": message[:1000]}, t)
            if self.agent.schema is not None:
                self.log({"_invalid": f"not JSON: {exc}"}, t)
            return
        self.log(msg if isinstance(msg, dict) else {"_json": msg}, t)
        if self.agent.schema is not None:
            errs = self.agent.schema.errors(msg)
            if errs:
                self.log({"_invalid": "; ".join(errs)}, t)
        if not isinstance(msg, dict):
            return
        event = msg.get("event")
        if event == "start":
            await self.on_start(msg)
        elif event == "media":
            await self.on_media(msg)
        elif event == "mark":
            self.on_mark(msg, t)

    async def on_start(self, msg: dict) -> None:
        sid = msg.get("streamSid")
        if not isinstance(sid, str):
            start = msg.get("start")
            sid = start.get("streamSid") if isinstance(start, dict) else None
        self.stream_sid = sid
        action = {
            "marks": self.do_marks,
            "clear": self.do_clear,
            "burst": self.do_burst,
            "malformed": self.do_malformed,
            "huge": self.do_huge,
        }.get(self.mode)
        if action is not None:
            self.spawn(action())

    async def on_media(self, msg: dict) -> None:
        self.media_count += 1
        if self.mode == "echo":
            media = msg.get("media")
            payload = media.get("payload") if isinstance(media, dict) else None
            sid = self.stream_sid or msg.get("streamSid")
            await self.send_json({"event": "media", "streamSid": sid, "media": {"payload": payload}})
        elif self.mode == "vanish" and self.media_count == 50 and not self.vanished:
            self.vanished = True
            self.log({"_sent": "reset", "after_media": self.media_count})
            self.agent.reset(self.ws)

    def on_mark(self, msg: dict, t: int) -> None:
        mark = msg.get("mark")
        name = mark.get("name") if isinstance(mark, dict) else None
        if name not in self.mark_sent_at:
            return
        entry = {"_mark_echo": name, "_ms_after_sent": t - self.mark_sent_at[name]}
        if self.mode == "clear":
            entry["_ms_after_clear"] = None if self.clear_sent_at is None else t - self.clear_sent_at
        self.log(entry, t)

    # -- mode actions -----------------------------------------------------------

    async def do_marks(self) -> None:
        chunk = SAMPLE_RATE // 5  # 200 ms = 1600 bytes
        for i in range(5):
            await self.send_media(tone(chunk, i * chunk))
            await self.send_mark(f"m{i + 1}")

    async def do_clear(self) -> None:
        await self.send_media(tone(SAMPLE_RATE * 10))  # 10 s = 80000 bytes
        await self.send_mark("before_clear")
        await asyncio.sleep(0.5)
        await self.send_clear()

    async def do_burst(self) -> None:
        frame = SAMPLE_RATE // 50  # 20 ms = 160 bytes
        count = 60 * 50  # 60 s
        audio = tone(frame * count)
        self.log({"_sent": "burst_begin", "frames": count, "bytes_per_frame": frame})
        for i in range(count):
            await self.send_media(audio[i * frame : (i + 1) * frame], log=False)
        self.log({"_sent": "burst_end", "frames": count})

    async def do_malformed(self) -> None:
        await self.ws.send("{not json")
        self.log({"_sent": "raw", "what": "not json"})
        await self.send_json(
            {"event": "frobnicate", "streamSid": self.stream_sid, "frobnicate": {"level": 11}}
        )
        self.log({"_sent": "raw", "what": "unknown event"})
        await self.send_json(
            {"event": "media", "streamSid": self.stream_sid, "media": {"payload": "**not base64!**"}}
        )
        self.log({"_sent": "raw", "what": "media with invalid base64"})

    async def do_huge(self) -> None:
        head = json.dumps({"event": "media", "streamSid": self.stream_sid, "media": {"payload": ""}},
                          separators=(",", ":"))
        # Fill the payload so that the whole frame is just under 10 MiB.
        nb64 = (HUGE_FRAME_BYTES - len(head)) // 4 * 4
        payload = b64(tone(nb64 // 4 * 3))
        text = head.replace('"payload":""', '"payload":"' + payload + '"')
        await self.ws.send(text)
        self.log({"_sent": "media", "bytes": nb64 // 4 * 3, "frame_bytes": len(text.encode())})

    async def do_hangup(self) -> None:
        await asyncio.sleep(2.0)
        self.log({"_sent": "close", "code": 1000})
        await self.ws.close(1000, "hangup")


# ---------------------------------------------------------------------------
# Server, for both websockets APIs
# ---------------------------------------------------------------------------


class Agent:
    def __init__(self, args):
        self.mode = args.mode
        self.log = Log(args.log)
        self.schema = SchemaCheck(args.schema) if args.schema else None
        self.conn_count = 0
        self.legacy = _new_serve is None or args.legacy_api
        self.accept_delay = args.accept_delay_ms / 1000.0

    # -- request/close description (API differences) -----------------------------

    def describe_request(self, ws) -> dict:
        if self.legacy:
            path = ws.path
            headers = ws.request_headers
        else:
            path = ws.request.path
            headers = ws.request.headers
        peer = ws.remote_address
        return {
            "path": path,
            "peer": f"{peer[0]}:{peer[1]}" if peer else None,
            "headers": {k: v for k, v in headers.raw_items()},
        }

    def describe_close(self, ws) -> dict:
        if self.legacy:
            rcvd, sent = getattr(ws, "close_rcvd", None), getattr(ws, "close_sent", None)
        else:
            rcvd, sent = ws.protocol.close_rcvd, ws.protocol.close_sent
        code = getattr(ws, "close_code", None)
        reason = getattr(ws, "close_reason", None)
        if code is None:
            code = rcvd.code if rcvd is not None else 1006
            reason = rcvd.reason if rcvd is not None else ""
        return {
            "_close": code,
            "rcvd": rcvd.code if rcvd is not None else None,
            "sent": sent.code if sent is not None else None,
            "reason": reason,
        }

    def reset(self, ws) -> None:
        """Drop the TCP connection at once: RST, no close frame, no FIN."""
        transport = ws.transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        transport.abort()

    # -- handshake hooks ------------------------------------------------------------

    def _refused(self, path, peer) -> None:
        self.conn_count += 1
        self.log.write(
            self.conn_count,
            {"_refused": {"path": path, "peer": f"{peer[0]}:{peer[1]}" if peer else None, "status": 403}},
        )

    async def process_request_new(self, connection, request):
        if self.accept_delay > 0:
            # A slow agent: the upgrade is answered only after the delay.
            await asyncio.sleep(self.accept_delay)
        if self.mode != "refuse":
            return None
        self._refused(request.path, connection.remote_address)
        return connection.respond(HTTPStatus.FORBIDDEN, "Forbidden by test agent (mode refuse)\n")

    # -- connection handler ----------------------------------------------------------

    async def handler(self, ws, path=None):  # `path` only for websockets 10.0
        self.conn_count += 1
        await Session(self, ws, self.conn_count).run()

    async def serve(self, host: str, port: int, ssl_ctx) -> None:
        common = dict(
            ssl=ssl_ctx,
            max_size=None,  # accept (and the huge mode: be ready for) any size
            compression=None,  # no permessage-deflate: frame sizes stay what they are
            ping_interval=None,  # no keepalive pings: silent really sends nothing
        )
        if not self.legacy:
            server = await _new_serve(
                self.handler, host, port, process_request=self.process_request_new, **common
            )
        else:
            agent = self

            async def process_request(path, request_headers):
                if agent.accept_delay > 0:
                    await asyncio.sleep(agent.accept_delay)
                if agent.mode != "refuse":
                    return None
                agent._refused(path, None)
                return (HTTPStatus.FORBIDDEN, [], b"Forbidden by test agent (mode refuse)\n")

            legacy_serve = getattr(websockets, "serve", None)
            if _new_serve is not None:  # --legacy-api with websockets >= 13
                from websockets.legacy.server import serve as legacy_serve
            server = await legacy_serve(
                self.handler, host, port, process_request=process_request, **common
            )

        stop = asyncio.get_running_loop().create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                asyncio.get_running_loop().add_signal_handler(
                    sig, lambda: stop.done() or stop.set_result(None)
                )
            except (NotImplementedError, RuntimeError):
                pass

        bound = server.sockets[0].getsockname()[1]
        sys.stdout.write(f"listening {bound}\n")
        sys.stdout.flush()
        try:
            await stop
        finally:
            server.close()
            try:
                await asyncio.wait_for(server.wait_closed(), 5)
            except asyncio.TimeoutError:
                pass
            self.log.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    p.add_argument("--mode", required=True, choices=MODES)
    p.add_argument("--log", help="JSON-lines log file ('-' = stderr); none by default")
    p.add_argument("--schema", help="JSON Schema to validate received JSON text messages against")
    p.add_argument("--accept-delay-ms", type=int, default=0,
                   help="answer each WebSocket upgrade only after this many ms (a slow agent)")
    p.add_argument("--tls-cert", help="PEM certificate (chain): serve wss://")
    p.add_argument("--tls-key", help="PEM private key for --tls-cert")
    p.add_argument("--legacy-api", action="store_true",
                   help="use websockets' legacy server even if the new asyncio one exists (for testing)")
    args = p.parse_args()

    ssl_ctx = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            p.error("--tls-cert and --tls-key go together")
        ssl_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ssl_ctx.load_cert_chain(args.tls_cert, args.tls_key)

    agent = Agent(args)
    asyncio.run(agent.serve(args.host, args.port, ssl_ctx))
    return 0


if __name__ == "__main__":
    sys.exit(main())
