#!/usr/bin/env python3
"""A UDP service for handoff run: answers every datagram on the socket
handoff passes as fd 3 with the datagram, a sequence number and its pid.

- It reports ready with READY=1 on $NOTIFY_SOCKET, and reads only once
  handoff writes "G" on its stdin (its generation is ready), so a failed
  upgrade takes no datagram from the socket the serving one reads.
- On SIGTERM it stops reading: each datagram it read is answered already,
  and what is still queued in the socket is the new generation's to read.
- EOF on stdin means the master is gone: it exits at once.

It never changes the socket's flags (O_NONBLOCK belongs to the socket,
shared by every worker): it polls and reads with MSG_DONTWAIT.
"""
import os
import select
import signal
import socket
import sys

if os.environ.get("LISTEN_PID") != str(os.getpid()) or int(os.environ.get("LISTEN_FDS", "0")) < 1:
    sys.exit("udpapp: no socket passed: run me under handoff run (LISTEN_FDS, LISTEN_PID)")
sock = socket.socket(fileno=3)
# One socket for every generation: a larger buffer holds what arrives
# while a busy machine starts the next one (the kernel caps it at
# net.core.rmem_max).
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
pid = os.getpid()
wake_r, wake_w = os.pipe()
stopping = False


def on_term(signum, frame):
    global stopping
    stopping = True
    os.write(wake_w, b"x")


signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGINT, on_term)


def notify_ready():
    path = os.environ.pop("NOTIFY_SOCKET", "")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as n:
        n.sendto(b"READY=1", path)


def send(data, addr):
    while True:
        try:
            sock.sendto(data, socket.MSG_DONTWAIT, addr)
            return
        except BlockingIOError:
            p = select.poll()
            p.register(3, select.POLLOUT)
            p.poll(1000)


notify_ready()
print(f'app=udpapp msg="worker ready" pid={pid}', file=sys.stderr, flush=True)
seq = 0
gate = False
poller = select.poll()
poller.register(0, select.POLLIN)
poller.register(wake_r, select.POLLIN)
while not stopping:
    for fd, _ in poller.poll():
        if fd == 0:
            b = os.read(0, 64)
            if not b:
                print(f'app=udpapp msg="master gone" pid={pid}', file=sys.stderr, flush=True)
                sys.exit(0)
            if b"G" in b and not gate:
                gate = True
                poller.register(3, select.POLLIN)
        elif fd == 3:
            while not stopping:
                try:
                    data, addr = sock.recvfrom(65536, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                seq += 1
                send(b"%s seq=%d pid=%d" % (data, seq, pid), addr)
print(f'app=udpapp msg="stopped reading datagrams" pid={pid} answered={seq}', file=sys.stderr, flush=True)
