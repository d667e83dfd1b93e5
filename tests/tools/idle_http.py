#!/usr/bin/env python3
"""Idle HTTP connections for dialerd's flood test: opens COUNT TCP connections
to TARGET (loopback only), sends nothing, holds them for HOLD seconds, then
closes them. Prints a JSON line: connections opened and seen closed by the
server."""

import argparse
import json
import resource
import select
import socket
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True)
    p.add_argument("--count", type=int, default=10000)
    p.add_argument("--hold", type=float, default=20.0)
    p.add_argument("--source", default="127.66.0.1")
    args = p.parse_args()
    host, port = args.target.rsplit(":", 1)
    assert host.startswith("127."), "loopback only"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    socks = []
    failed = 0
    for _ in range(args.count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.bind((args.source, 0))
            s.connect_ex((host, int(port)))
            socks.append(s)
        except OSError:
            s.close()
            failed += 1
    print(json.dumps({"event": "opened", "opened": len(socks), "failed": failed}), flush=True)
    end = time.monotonic() + args.hold
    closed = set()
    poller = select.epoll()
    for s in socks:
        poller.register(s.fileno(), select.EPOLLRDHUP | select.EPOLLIN)
    while time.monotonic() < end:
        for fd, ev in poller.poll(0.2):
            closed.add(fd)
            poller.unregister(fd)
    for s in socks:
        s.close()
    print(json.dumps({"event": "done", "opened": len(socks), "closed_by_server": len(closed)}), flush=True)


if __name__ == "__main__":
    main()
