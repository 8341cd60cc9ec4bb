"""Ancillary data both ways on UDP (IPv4 and IPv6), printed so a native and a redirected run
can be compared byte for byte: what recvmsg returns (data, cmsg levels/types/values, flags)
for each option, what sendmsg's per-packet options do, and MSG_CTRUNC with a short buffer."""
import socket, struct, sys

# Linux values (Python 3.11 lacks some names).
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IP_RECVTOS = getattr(socket, "IP_RECVTOS", 13)
IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)
SO_TIMESTAMP = getattr(socket, "SO_TIMESTAMP", 29)

out = []
def say(*a):
    out.append(" ".join(str(x) for x in a))

def cmsgs(anc):
    r = []
    for level, kind, data in anc:
        if (level, kind) == (socket.SOL_SOCKET, SO_TIMESTAMP):
            sec, usec = struct.unpack("qq", data)
            r.append((level, kind, "ts-ok" if sec > 1_600_000_000 else "ts-bad"))
        elif (level, kind) == (socket.IPPROTO_IP, IP_PKTINFO):
            ifindex, spec, addr = struct.unpack("i4s4s", data)
            r.append((level, kind, socket.inet_ntoa(addr)))
        elif (level, kind) == (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO):
            addr, ifindex = data[:16], data[16:]
            r.append((level, kind, socket.inet_ntop(socket.AF_INET6, addr)))
        else:
            r.append((level, kind, data.hex()))
    return r

def v4():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    for opt in (IP_PKTINFO, IP_RECVTOS, IP_RECVTTL):
        rx.setsockopt(socket.IPPROTO_IP, opt, 1)
    rx.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # Per-packet options: TOS 0x20 and TTL 9 on the first, none on the second.
    n = tx.sendmsg([b"one"], [(socket.IPPROTO_IP, socket.IP_TOS, struct.pack("i", 0x20)),
                               (socket.IPPROTO_IP, socket.IP_TTL, struct.pack("i", 9))],
                   0, rx.getsockname())
    say("v4 sent", n)
    tx.sendto(b"two", rx.getsockname())
    for _ in range(2):
        data, anc, flags, addr = rx.recvmsg(100, 1024)
        say("v4 got", data, sorted(cmsgs(anc)), flags, addr[0])
    # A control buffer too short for everything: MSG_CTRUNC, as the kernel truncates.
    tx.sendto(b"three", rx.getsockname())
    data, anc, flags, addr = rx.recvmsg(100, socket.CMSG_SPACE(4))
    say("v4 short", data, len(anc), bool(flags & socket.MSG_CTRUNC))
    # No control buffer at all: no MSG_CTRUNC... on Linux it is set when messages were dropped.
    tx.sendto(b"four", rx.getsockname())
    data, anc, flags, addr = rx.recvmsg(100)
    say("v4 none", data, len(anc), bool(flags & socket.MSG_CTRUNC))
    # Descriptors cannot travel over an internet socket.
    try:
        tx.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", 0))], 0, rx.getsockname())
        say("v4 rights sent")
    except OSError as e:
        say("v4 rights", e.errno)

def v6():
    try:
        rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        rx.bind(("::1", 0))
    except OSError as e:
        say("v6 unavailable", e.errno)
        return
    for opt in (socket.IPV6_RECVHOPLIMIT, socket.IPV6_RECVTCLASS, socket.IPV6_RECVPKTINFO):
        rx.setsockopt(socket.IPPROTO_IPV6, opt, 1)
    tx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    n = tx.sendmsg([b"six"], [(socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT, struct.pack("i", 7)),
                               (socket.IPPROTO_IPV6, socket.IPV6_TCLASS, struct.pack("i", 0x28))],
                   0, rx.getsockname()[:2])
    say("v6 sent", n)
    data, anc, flags, addr = rx.recvmsg(100, 1024)
    say("v6 got", data, sorted(cmsgs(anc)), flags, addr[0])

v4()
v6()
print("\n".join(out))
