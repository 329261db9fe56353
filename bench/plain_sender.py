"""The least a sender can do: one fixed message to every address of a subscriber list, over
pipelined SMTP, one process per connection; no ledger, no per-recipient message, no retries.

    python bench/plain_sender.py PORT CONNECTIONS MESSAGE.eml SUBSCRIBERS.csv

`smtp-source` sends every message to one address, and a relay's work depends on the addresses
(a real Postfix delivers to as many mailboxes and schedules as many destinations as the list
has): this sender gives the mailer a reference with the same messages to the same addresses,
so that what is the relay's work and what is the mailer's can be told apart.
"""

from __future__ import annotations

import csv
import multiprocessing
import socket
import sys
from pathlib import Path

SENDER = "bounces@example.org"


def send(port: int, message: bytes, addresses: list[str]) -> None:
    if not addresses:
        return
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        replies = sock.makefile("rb")

        def expect(codes: bytes) -> None:
            while True:
                line = replies.readline()
                if line[3:4] != b"-":
                    break
            if line[:1] not in codes:
                raise SystemExit(f"plain sender: refused: {line!r}")

        def envelope(address: str) -> bytes:
            return f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{address}>\r\nDATA\r\n".encode()

        expect(b"2")
        sock.sendall(b"EHLO bench.example.org\r\n")
        expect(b"2")
        sock.sendall(envelope(addresses[0]))
        for n in range(len(addresses)):
            expect(b"2")
            expect(b"2")
            expect(b"3")
            sock.sendall(message)
            # the dot with the next message's envelope (RFC 2920), as the mailer sends it
            following = envelope(addresses[n + 1]) if n + 1 < len(addresses) else b""
            sock.sendall(b".\r\n" + following)
            expect(b"2")
        sock.sendall(b"QUIT\r\n")
        expect(b"2")


def main() -> int:
    port, connections = int(sys.argv[1]), int(sys.argv[2])
    message = Path(sys.argv[3]).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    message = message.replace(b"\r\n.", b"\r\n..")
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    with open(sys.argv[4], newline="", encoding="utf-8") as rows:
        addresses = [row["email"] for row in csv.DictReader(rows)]
    workers = [
        multiprocessing.Process(target=send, args=(port, message, addresses[n::connections]))
        for n in range(connections)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return max((worker.exitcode or 0) for worker in workers)


if __name__ == "__main__":
    sys.exit(main())
