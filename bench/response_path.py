#!/usr/bin/env python3
"""The server's response path on loopback, measured with one clock.

Sends plain NTPv4 requests to a server on this machine and, for every reply,
takes the kernel's receive timestamp (SO_TIMESTAMPNS). On loopback that
timestamp is taken while the server's own send call delivers the reply, so
T4 - T3 is the time from the server reading its transmit timestamp to the
reply reaching the kernel's network stack, on the same clock the server
read: no client clock, no asymmetry guess. Its spread is the server's share
of the offset spread a client sees. T2 - t1 (the server's receive timestamp
minus a client clock read just before sending) is printed for reference.

Usage: bench/response_path.py HOST:PORT [COUNT] [INTERVAL_SECONDS]
       (default 500 requests, 0.02 s apart)
"""
import socket
import statistics
import struct
import sys
import time

NTP_UNIX_OFFSET = 2208988800
SO_TIMESTAMPNS = 35  # Linux; not exported by Python's socket module


def quantile(values, p):
    v = sorted(values)
    i = (len(v) - 1) * p
    lo = int(i)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (i - lo)


def ntp_nanos(b):
    """Unix nanoseconds of an NTP timestamp, exactly (a float of Unix
    seconds would round to 0.24 us)."""
    secs, frac = struct.unpack("!II", b)
    return (secs - NTP_UNIX_OFFSET) * 1_000_000_000 + (frac * 1_000_000_000 >> 32)


def main():
    if len(sys.argv) < 2 or ":" not in sys.argv[1]:
        sys.exit(__doc__)
    host, port = sys.argv[1].rsplit(":", 1)
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    interval = float(sys.argv[3]) if len(sys.argv) > 3 else 0.02
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.connect((host, int(port)))
    s.settimeout(1)
    out_path, in_path, lost = [], [], 0
    for i in range(count):
        request = bytearray(48)
        request[0] = 0x23  # NTPv4, client
        origin = struct.pack("!Q", (i + 1) * 7919)
        request[40:48] = origin
        t1 = time.time_ns()
        s.send(request)
        try:
            data, ancillary, _, _ = s.recvmsg(1024, 1024)
        except socket.timeout:
            lost += 1
            continue
        t4 = None
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                secs, nanos = struct.unpack("qq", value[:16])
                t4 = secs * 1_000_000_000 + nanos
        if len(data) < 48 or data[24:32] != origin or t4 is None:
            lost += 1
            continue
        t2, t3 = ntp_nanos(data[32:40]), ntp_nanos(data[40:48])
        out_path.append((t4 - t3) / 1000)
        in_path.append((t2 - t1) / 1000)
        time.sleep(interval)
    if not out_path:
        sys.exit("no usable replies")
    print(
        f"{sys.argv[1]}: replies {len(out_path)} lost {lost} | "
        f"T4-T3 median {statistics.median(out_path):.2f} us, "
        f"IQR {quantile(out_path, .75) - quantile(out_path, .25):.2f}, "
        f"p5..p95 {quantile(out_path, .05):.2f}..{quantile(out_path, .95):.2f} | "
        f"T2-t1 median {statistics.median(in_path):.2f} us, "
        f"IQR {quantile(in_path, .75) - quantile(in_path, .25):.2f}"
    )


if __name__ == "__main__":
    main()
