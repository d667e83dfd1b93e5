#!/usr/bin/env python3
"""Connects to TARGET from the loopback address SOURCE and reports what the
server does within 5 s without being sent anything: "closed" (EOF or reset)
or "open". Loopback only."""

import argparse
import socket


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--source", required=True)
    p.add_argument("--target", required=True)
    args = p.parse_args()
    host, port = args.target.rsplit(":", 1)
    assert host.startswith("127.") and args.source.startswith("127."), "loopback only"
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((args.source, 0))
    s.settimeout(5)
    s.connect((host, int(port)))
    try:
        data = s.recv(16)
        print("closed" if not data else "data")
    except ConnectionResetError:
        print("closed")
    except socket.timeout:
        print("open")


if __name__ == "__main__":
    main()
