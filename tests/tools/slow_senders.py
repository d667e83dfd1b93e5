#!/usr/bin/env python3
"""Slow TCP senders for dialerd's flood test: COUNT connections, each from its
own loopback source address, each sending one byte every INTERVAL seconds and
connecting again 0.2 s after it is closed, for DURATION seconds. Prints a JSON
line with what happened. Loopback only; bounded in count and time."""

import argparse
import json
import selectors
import socket
import time


def source(base, i):
    a, b = base.split(".")
    return f"{a}.{b}.{i // 250}.{i % 250 + 1}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True)
    p.add_argument("--count", type=int, default=1100)
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--base", default="127.55")
    args = p.parse_args()
    host, port = args.target.rsplit(":", 1)
    assert host.startswith("127."), "loopback only"
    target = (host, int(port))
    sel = selectors.DefaultSelector()
    conns = {}
    stats = {"connects": 0, "refused": 0, "closed_by_peer": 0, "bytes_sent": 0}
    reconnect_at = {i: 0.0 for i in range(args.count)}
    next_byte = {}
    end = time.monotonic() + args.duration

    def connect(i):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.bind((source(args.base, i), 0))
            s.connect_ex(target)
        except OSError:
            s.close()
            stats["refused"] += 1
            reconnect_at[i] = time.monotonic() + 0.2
            return
        stats["connects"] += 1
        conns[i] = s
        next_byte[i] = time.monotonic() + 0.5
        sel.register(s, selectors.EVENT_READ, i)

    def close(i):
        s = conns.pop(i, None)
        if s is not None:
            sel.unregister(s)
            s.close()
        reconnect_at[i] = time.monotonic() + 0.2

    while time.monotonic() < end:
        now = time.monotonic()
        for i, at in list(reconnect_at.items()):
            if i not in conns and at <= now:
                connect(i)
        for key, _ in sel.select(timeout=0.05):
            i = key.data
            try:
                data = key.fileobj.recv(4096)
            except OSError:
                data = b""
            if not data:
                stats["closed_by_peer"] += 1
                close(i)
        now = time.monotonic()
        for i, at in list(next_byte.items()):
            if i in conns and at <= now:
                try:
                    conns[i].send(b"O")
                    stats["bytes_sent"] += 1
                except OSError:
                    stats["closed_by_peer"] += 1
                    close(i)
                    continue
                next_byte[i] = now + args.interval
    stats["open_at_end"] = len(conns)
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()
