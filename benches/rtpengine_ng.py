#!/usr/bin/env python3
"""Sets up bridged G.711 calls on rtpengine over its ng control protocol, for
benches/relay_load.sh (standard library only).

    rtpengine_ng.py NG_ADDR ADDRS_FILE PORTS_FILE
    rtpengine_ng.py NG_ADDR ping      # exit 0 once rtpengine answers "pong"

ADDRS_FILE is what rtp_load writes: one call a line, "A_ADDR B_ADDR" (the load
generator's two sockets for that call). For each call this sends rtpengine an
`offer` whose SDP is side A's (PCMU, payload type 0, 20 ms, sendrecv, at A's
address), then an `answer` whose SDP is side B's, with call-id
"relay-load-<n>", from-tag "a<n>" and to-tag "b<n>". rtpengine rewrites each
SDP for the other side: the offer's returned SDP holds the address B must send
to (PB), the answer's the address A must send to (PA). PORTS_FILE gets one call
a line, "PA PB" (written whole, then renamed into place), as rtp_load reads it.

ng protocol: one UDP datagram per request, "<cookie> <bencoded dictionary>";
the reply is "<cookie> <bencoded dictionary>" with "result": "ok" (or "error"
and "error-reason"). Requests are retried twice after 2 s without a reply.
Exit 1 on any failure, with the reason on stderr.
"""

import os
import re
import socket
import sys


def bencode(value):
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    if isinstance(value, dict):
        return b"d" + b"".join(bencode(k) + bencode(value[k]) for k in sorted(value)) + b"e"
    raise TypeError(f"cannot bencode {type(value)}")


def bdecode(data, at=0):
    """Returns (value, next offset); strings come back as str (UTF-8)."""
    kind = data[at:at + 1]
    if kind == b"i":
        end = data.index(b"e", at)
        return int(data[at + 1:end]), end + 1
    if kind == b"l":
        at += 1
        out = []
        while data[at:at + 1] != b"e":
            value, at = bdecode(data, at)
            out.append(value)
        return out, at + 1
    if kind == b"d":
        at += 1
        out = {}
        while data[at:at + 1] != b"e":
            key, at = bdecode(data, at)
            value, at = bdecode(data, at)
            out[key] = value
        return out, at + 1
    colon = data.index(b":", at)
    length = int(data[at:colon])
    start = colon + 1
    return data[start:start + length].decode("utf-8", "replace"), start + length


class Ng:
    def __init__(self, address, timeout=2.0):
        host, port = address.rsplit(":", 1)
        self.address = (host, int(port))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(timeout)
        self.serial = 0

    def request(self, command):
        self.serial += 1
        cookie = b"%d_%d" % (os.getpid(), self.serial)
        datagram = cookie + b" " + bencode(command)
        for _ in range(3):
            self.sock.sendto(datagram, self.address)
            try:
                while True:
                    reply, _ = self.sock.recvfrom(65535)
                    got, _, body = reply.partition(b" ")
                    if got == cookie:
                        return bdecode(body)[0]
            except socket.timeout:
                continue
        raise RuntimeError(f"no reply from rtpengine at {self.address} to {command['command']}")


def sdp(session, address):
    host, port = address.rsplit(":", 1)
    return (
        "v=0\r\n"
        f"o=- {session} 1 IN IP4 {host}\r\n"
        "s=relay-load\r\n"
        f"c=IN IP4 {host}\r\n"
        "t=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=ptime:20\r\n"
        "a=sendrecv\r\n"
    )


def media_address(body):
    """The audio address of an SDP: its first m=audio port, at that media's
    c= line if it has one, else at the session's."""
    session, media, port = None, None, None
    for line in body.splitlines():
        m = re.match(r"c=IN IP4 (\S+)", line)
        if m and port is None:
            session = m.group(1)
        elif m and media is None:
            media = m.group(1)
        m = re.match(r"m=(\w+) (\d+) ", line)
        if m and port is not None:
            break
        if m and m.group(1) == "audio":
            port = m.group(2)
    host = media or session
    if host is None or port is None:
        raise RuntimeError(f"no audio address in the SDP rtpengine returned:\n{body}")
    return f"{host}:{port}"


def main():
    if len(sys.argv) == 3 and sys.argv[2] == "ping":
        try:
            reply = Ng(sys.argv[1], timeout=0.3).request({"command": "ping"})
        except (RuntimeError, OSError) as e:
            sys.exit(f"rtpengine_ng: {e}")
        sys.exit(0 if reply.get("result") == "pong" else f"rtpengine_ng: ping: {reply}")
    if len(sys.argv) != 4:
        sys.exit(__doc__.split("\n\n")[1])
    ng = Ng(sys.argv[1])
    lines = [l.split() for l in open(sys.argv[2]) if l.strip()]
    out = []
    try:
        for n, (a, b) in enumerate(lines):
            call = {"call-id": f"relay-load-{n}", "from-tag": f"a{n}"}
            offer = ng.request({"command": "offer", "sdp": sdp(2 * n + 1, a), **call})
            if offer.get("result") != "ok":
                raise RuntimeError(f"offer {n}: {offer}")
            answer = ng.request({"command": "answer", "to-tag": f"b{n}", "sdp": sdp(2 * n + 2, b), **call})
            if answer.get("result") != "ok":
                raise RuntimeError(f"answer {n}: {answer}")
            out.append(f"{media_address(answer['sdp'])} {media_address(offer['sdp'])}\n")
    except (RuntimeError, OSError, ValueError) as e:
        sys.exit(f"rtpengine_ng: {e}")
    tmp = sys.argv[3] + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(out)
    os.rename(tmp, sys.argv[3])
    print(f"{len(out)} calls set up")


if __name__ == "__main__":
    main()
