#!/usr/bin/env python3
"""Traffic helpers the e2e tests run inside their own network namespaces
(`ip netns exec NS python3 nettool.py ...`). Every loop is bounded in count
and time; every socket has a timeout. Servers print "ready" once listening.

  tcp-server ADDR PORT            accept one connection, read to EOF, answer the
                                  byte count (8 bytes, big-endian), print it
  tcp-client ADDR PORT NBYTES     send NBYTES, half-close, print the server's count
  udp-echo ADDR PORT COUNT        echo COUNT datagrams back to their senders
  udp-client ADDR PORT SIZES      send one datagram per size (comma-separated),
                                  wait for each echo, print the sizes received
  udp-send ADDR PORT COUNT SIZE SPORT
                                  send COUNT datagrams of SIZE bytes from local port
                                  SPORT (unconnected: ICMP errors do not stop it),
                                  print how many sendto accepted
  tcp-send ADDR PORT NBYTES SPORT like tcp-client, from local port SPORT
  udp-spray ADDR PORT FIRST COUNT one datagram from each local port FIRST..FIRST+COUNT-1,
                                  print how many sendto accepted
  echo-server ADDR PORT COUNT     accept COUNT connections one by one: read up to 64
                                  bytes, echo them, wait for the client's FIN, close
  echo-clients ADDR PORT COUNT    COUNT connections one after another: send 32 bytes,
                                  read the echo, close first (as tools/bench's churn
                                  client does), print how many were echoed
  ping ADDR COUNT                 ICMP/ICMPv6 echo requests, wait for each reply
  get URL                         HTTP GET, print the body (exit 1 on failure)
"""
import os
import socket
import struct
import sys
import time
import urllib.request

TIMEOUT = 20.0


def family_of(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def ready() -> None:
    print("ready", flush=True)


def pin_cpu() -> None:
    """Keeps a TCP endpoint on one CPU. A veth hands each packet to the backlog
    of the CPU that sent it, so a sender that migrates can reorder its own
    packets, and the receiver's SACKs then trigger (spurious) retransmissions,
    which would make two runs of the same transfer differ."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def listening(addr: str, port: str, backlog: int) -> socket.socket:
    """A TCP listener with the accept timeout, after printing "ready"."""
    s = socket.socket(family_of(addr), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, int(port)))
    s.listen(backlog)
    s.settimeout(TIMEOUT)
    ready()
    return s


def tcp_server(addr: str, port: str) -> None:
    pin_cpu()
    s = listening(addr, port, 1)
    c, _ = s.accept()
    c.settimeout(TIMEOUT)
    total = 0
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        b = c.recv(1 << 20)
        if not b:
            break
        total += len(b)
    c.sendall(struct.pack("!Q", total))
    c.close()
    s.close()
    print(total, flush=True)


SO_SNDBUFFORCE = 32


def tcp_client(addr: str, port: str, nbytes: str) -> None:
    """One send() of the whole payload into a send buffer that holds all of it:
    the kernel then cuts the stream into full-MSS segments (or TSO skbs of whole
    segments) and only the last one is short, so the wire packets do not depend
    on scheduling, with or without offloads."""
    pin_cpu()
    n = int(nbytes)
    c = socket.socket(family_of(addr), socket.SOCK_STREAM)
    try:
        c.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 4 * n + (1 << 20))  # root only
    except OSError:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * n + (1 << 20))
    c.settimeout(TIMEOUT)
    c.connect((addr, int(port)))
    c.sendall((bytes(range(256)) * (n // 256 + 1))[:n])
    finish_client(c)


def finish_client(c: socket.socket) -> None:
    """Half-close, read the server's 8-byte count, read to its FIN (so
    close() sends no RST), close, and print the count."""
    c.shutdown(socket.SHUT_WR)
    answer = b""
    while len(answer) < 8:
        b = c.recv(8 - len(answer))
        if not b:
            break
        answer += b
    while c.recv(4096):
        pass
    c.close()
    if len(answer) != 8:
        sys.exit(f"server closed without answering ({answer!r})")
    print(struct.unpack("!Q", answer)[0], flush=True)


def tcp_stream(addr: str, port: str, seconds: str, chunk: str) -> None:
    """A steady stream for `seconds`: `chunk` bytes every 10 ms (bounded:
    at most 100 x chunk bytes a second), then the same close and answer as
    tcp-client. Prints the bytes the server counted."""
    n = int(chunk)
    c = socket.socket(family_of(addr), socket.SOCK_STREAM)
    c.settimeout(TIMEOUT)
    c.connect((addr, int(port)))
    data = (bytes(range(256)) * (n // 256 + 1))[:n]
    end = time.monotonic() + float(seconds)
    while time.monotonic() < end:
        c.sendall(data)
        time.sleep(0.01)
    finish_client(c)


def udp_echo(addr: str, port: str, count: str) -> None:
    s = socket.socket(family_of(addr), socket.SOCK_DGRAM)
    s.bind((addr, int(port)))
    s.settimeout(TIMEOUT)
    ready()
    for _ in range(int(count)):
        data, peer = s.recvfrom(65535)
        s.sendto(data, peer)
    s.close()


def udp_client(addr: str, port: str, sizes: str) -> None:
    s = socket.socket(family_of(addr), socket.SOCK_DGRAM)
    s.settimeout(5.0)
    s.connect((addr, int(port)))
    got = []
    for size in (int(x) for x in sizes.split(",")):
        s.send(bytes([0x5A]) * size)
        got.append(len(s.recv(65535)))
    s.close()
    print(",".join(map(str, got)), flush=True)


def udp_send(addr: str, port: str, count: str, size: str, sport: str) -> None:
    s = socket.socket(family_of(addr), socket.SOCK_DGRAM)
    s.bind(("", int(sport)))
    sent = 0
    for _ in range(int(count)):
        if s.sendto(bytes([0x5A]) * int(size), (addr, int(port))) == int(size):
            sent += 1
    s.close()
    print(sent, flush=True)


def udp_spray(addr: str, port: str, first: str, count: str) -> None:
    sent = 0
    for p in range(int(first), int(first) + int(count)):
        s = socket.socket(family_of(addr), socket.SOCK_DGRAM)
        s.bind(("", p))
        if s.sendto(b"\x5a" * 16, (addr, int(port))) == 16:
            sent += 1
        s.close()
    print(sent, flush=True)


def tcp_send(addr: str, port: str, nbytes: str, sport: str) -> None:
    pin_cpu()
    s = socket.socket(family_of(addr), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", int(sport)))
    s.settimeout(TIMEOUT)
    s.connect((addr, int(port)))
    s.sendall(bytes([0x5A]) * int(nbytes))
    finish_client(s)


def echo_server(addr: str, port: str, count: str) -> None:
    l = listening(addr, port, 64)
    for _ in range(int(count)):
        c, _ = l.accept()
        c.settimeout(TIMEOUT)
        d = c.recv(64)
        if d:
            c.sendall(d)
            c.recv(64)  # the client's FIN: the client closes first
        c.close()
    l.close()


def echo_clients(addr: str, port: str, count: str) -> None:
    echoed = 0
    for _ in range(int(count)):
        s = socket.socket(family_of(addr), socket.SOCK_STREAM)
        s.settimeout(TIMEOUT)
        s.connect((addr, int(port)))
        s.sendall(b"x" * 32)
        if s.recv(64):
            echoed += 1
        s.close()
    print(echoed, flush=True)


def _checksum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    t = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while t >> 16:
        t = (t & 0xFFFF) + (t >> 16)
    return ~t & 0xFFFF


def ping(addr: str, count: str) -> None:
    v6 = ":" in addr
    if v6:
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        req_type, rep_type = 128, 129
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        req_type, rep_type = 8, 0
    s.settimeout(3.0)
    ident = os.getpid() & 0xFFFF
    replies = 0
    for seq in range(int(count)):
        payload = b"flowmeter-e2e" + bytes(19)
        hdr = struct.pack("!BBHHH", req_type, 0, 0, ident, seq)
        # ICMPv6 checksums are filled in by the kernel on raw ICMPv6 sockets.
        csum = 0 if v6 else _checksum(hdr + payload)
        s.sendto(struct.pack("!BBHHH", req_type, 0, csum, ident, seq) + payload, (addr, 0))
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            data = s.recv(2048)
            icmp = data if v6 else data[(data[0] & 0x0F) * 4:]
            if len(icmp) >= 8 and icmp[0] == rep_type:
                rid, rseq = struct.unpack("!HH", icmp[4:8])
                if rid == ident and rseq == seq:
                    replies += 1
                    break
    s.close()
    print(replies, flush=True)
    if replies != int(count):
        sys.exit(f"{replies} of {count} echo replies")


def get(url: str) -> None:
    with urllib.request.urlopen(url, timeout=5) as r:
        sys.stdout.write(f"content-type: {r.headers.get('Content-Type')}\n\n")
        sys.stdout.write(r.read().decode())


COMMANDS = {"tcp-server": tcp_server, "tcp-client": tcp_client, "tcp-stream": tcp_stream, "udp-echo": udp_echo,
            "udp-client": udp_client, "udp-send": udp_send, "udp-spray": udp_spray, "tcp-send": tcp_send,
            "echo-server": echo_server, "echo-clients": echo_clients, "ping": ping, "get": get}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    COMMANDS[sys.argv[1]](*sys.argv[2:])
