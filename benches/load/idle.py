#!/usr/bin/env python3
"""Memory and CPU of idle keep-alive client connections.

Opens N client connections to each HOST:PORT target, sends one GET / on each (so the
proxy has served a request and now holds an idle keep-alive connection), then measures
the target process tree's resident memory before and after, and its CPU over an idle
window. Prints a Markdown table. Loopback only; bounded by N and the window.

    benches/load/idle.py --conns 10000 --idle 10 drover=127.0.0.1:8080:PID nginx=127.0.0.1:8081:PID

PID is the process whose tree is measured (drover, or nginx's master). The script needs
a file-descriptor limit above N (`ulimit -n`).
"""
import argparse
import asyncio
import os
import sys
import time


def tree(pid):
    """pid and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def rss_kib(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def cpu_ticks(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total


async def open_idle(host, port, n):
    conns = []
    req = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    sem = asyncio.Semaphore(200)

    async def one():
        async with sem:
            r, w = await asyncio.open_connection(host, port)
            w.write(req)
            await w.drain()
            head = await r.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if length:
                await r.readexactly(length)
            conns.append((r, w))

    await asyncio.gather(*(one() for _ in range(n)))
    return conns


async def measure(name, host, port, pid, n, idle):
    pids = tree(pid)
    before = rss_kib(pids)
    t0 = time.time()
    conns = await open_idle(host, port, n)
    opened = time.time() - t0
    await asyncio.sleep(1)
    pids = tree(pid)
    during = rss_kib(pids)
    c0 = cpu_ticks(pids)
    await asyncio.sleep(idle)
    c1 = cpu_ticks(pids)
    for _, w in conns:
        w.close()
    hz = os.sysconf("SC_CLK_TCK")
    return {
        "name": name,
        "conns": len(conns),
        "open_s": opened,
        "rss_before_mib": before / 1024,
        "rss_idle_mib": during / 1024,
        "kib_per_conn": (during - before) / max(len(conns), 1),
        "idle_cpu_pct": 100.0 * (c1 - c0) / hz / idle,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("targets", nargs="+", help="name=host:port:pid")
    a = ap.parse_args()
    rows = []
    for t in a.targets:
        name, rest = t.split("=", 1)
        host, port, pid = rest.split(":")
        rows.append(asyncio.run(measure(name, host, int(port), int(pid), a.conns, a.idle)))
    print("| target | idle connections | RSS before (MiB) | RSS with them (MiB) | KiB per connection | CPU while idle |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['name']} | {r['conns']} | {r['rss_before_mib']:.1f} | {r['rss_idle_mib']:.1f} | "
              f"{r['kib_per_conn']:.1f} | {r['idle_cpu_pct']:.2f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
