#!/usr/bin/env python3
"""Helpers for benches/load/run.sh: parse wrk output and print the comparison table.

Subcommands (run.sh is the only caller; the interface is not stable):
  line FILE [CPU_TICKS CLK_TCK]   one human-readable line for a finished run
  table RUNS_TSV                  the Markdown summary of every run in RUNS_TSV
  drover-healthy                  exit 0 if the /api/status JSON on stdin shows every
                                  backend healthy (and at least one backend)
  merge BASE EXTRA                print BASE with EXTRA's top-level YAML blocks replacing
                                  BASE's blocks of the same key (others appended)
  cookies URL N                   GET URL N times without cookies on one keep-alive
                                  connection; print each response's first Set-Cookie pair
                                  (name=value), one per line; exit 3 if none is set
  lua COOKIES_FILE                print a wrk script sending those Cookie headers in turn
  post-lua N [PIECES]             print a wrk script POSTing an N-byte body (with PIECES:
                                  Transfer-Encoding: chunked, in PIECES equal chunks)
  errors RUNS_TSV                 exit 1 if a run of a scenario other than kill9 saw
                                  errors (one line per such target)

RUNS_TSV columns (tab-separated, no header):
  scenario  target  round  wrk_output_file  cpu_ticks|-  clk_tck  note  user_ticks|-  syscalls|-
"""

import json
import os
import platform
import re
import statistics
import sys
from datetime import datetime, timezone

UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}
# Top-level config keys the harness owns: an extra/variant file may not replace them.
PROTECTED_KEYS = {"listen", "admin", "runtime_dir", "upstreams"}
TOP_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)[ \t]*:")


def variants():
    return [v for v in os.environ.get("BENCH_VARIANTS", "").split(",") if v]


def target_order():
    # drover variants sit right after drover.
    return ["direct", "drover"] + variants() + ["nginx", "haproxy"]


def to_ms(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        return None
    return float(m.group(1)) * UNIT_MS[m.group(2)]


def parse_wrk(path):
    """Requests/s, request count, p50/p99 in ms and error counts from `wrk --latency`."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        text = ""
    r = {"rps": None, "requests": None, "p50": None, "p99": None,
         "non2xx": 0, "socket": 0, "socket_detail": "", "ok": False}
    if "ApacheBench" in text:
        return parse_ab(text, r)
    if "h2load" in text or re.search(r"^finished in .* req/s", text, re.M):
        return parse_h2load(text, r)
    m = re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.M)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"^\s*(\d+) requests in ", text, re.M)
    if m:
        r["requests"] = int(m.group(1))
    for pct, val in re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)\s*$", text, re.M):
        r["p" + pct] = to_ms(val)
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        c, rd, w, t = (int(x) for x in m.groups())
        r["socket"] = c + rd + w + t
        r["socket_detail"] = f"connect {c}, read {rd}, write {w}, timeout {t}"
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        r["non2xx"] = int(m.group(1))
    r["ok"] = r["rps"] is not None and r["requests"] is not None
    return r


def parse_ab(text, r):
    """The same fields from ApacheBench's report (latencies are whole milliseconds)."""
    m = re.search(r"^Requests per second:\s+([0-9.]+)", text, re.M)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"^Complete requests:\s+(\d+)", text, re.M)
    if m:
        r["requests"] = int(m.group(1))
    for pct, val in re.findall(r"^\s+(50|99)%\s+(\d+)", text, re.M):
        r["p" + pct] = float(val)
    m = re.search(r"^Failed requests:\s+(\d+)", text, re.M)
    if m:
        r["socket"] = int(m.group(1))
        r["socket_detail"] = f"failed {m.group(1)}"
    m = re.search(r"^Non-2xx responses:\s+(\d+)", text, re.M)
    if m:
        r["non2xx"] = int(m.group(1))
    r["ok"] = r["rps"] is not None and r["requests"] is not None
    return r


def parse_h2load(text, r):
    """The same fields from h2load's report: req/s, succeeded requests, mean request time
    as p50 (h2load prints no percentiles), failed/errored as socket errors, non-2xx."""
    m = re.search(r"^finished in [0-9.]+\w+, ([0-9.]+) req/s", text, re.M)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", text, re.M)
    if m:
        total, _, done, ok, failed, errored, timeout = (int(x) for x in m.groups())
        r["requests"] = ok
        r["socket"] = failed + errored + timeout
        r["socket_detail"] = f"failed {failed}, errored {errored}, timeout {timeout}"
    m = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text, re.M)
    if m:
        r["non2xx"] = sum(int(x) for x in m.groups()[2:])
    m = re.search(r"^time for request:\s+\S+\s+\S+\s+(\S+)", text, re.M)
    if m:
        r["p50"] = to_ms(m.group(1))
    r["ok"] = r["rps"] is not None and r["requests"] is not None
    return r


def cpu_us_per_req(ticks, clk_tck, requests):
    if ticks in (None, "", "-") or not requests:
        return None
    return int(ticks) * 1e6 / int(clk_tck) / requests


def fmt(v, digits=1, suffix=""):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}{suffix}"


def fmt_ms(v):
    if v is None:
        return "–"
    if v < 1:
        return f"{v * 1000:.0f} µs"
    return f"{v:.2f} ms"


def cmd_line(args):
    path = args[0]
    r = parse_wrk(path)
    if not r["ok"]:
        print(f"wrk output unparsable (see {path})")
        return 0
    cpu = cpu_us_per_req(args[1], args[2], r["requests"]) if len(args) >= 3 else None
    parts = [f"{fmt(r['rps'], 0)} req/s", f"p50 {fmt_ms(r['p50'])}", f"p99 {fmt_ms(r['p99'])}"]
    if cpu is not None:
        parts.append(f"CPU {cpu:.1f} µs/req")
    errors = r["non2xx"] + r["socket"]
    parts.append(f"errors {errors}" + (f" (non-2xx {r['non2xx']}, socket: {r['socket_detail']})"
                                       if errors else ""))
    print(", ".join(parts))
    return 0


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def machine_info():
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        ncpu = len(os.sched_getaffinity(0))
    except AttributeError:
        ncpu = os.cpu_count()
    return ncpu, model


# Scenarios whose errors are the point of the run (a worker is killed on purpose).
ERRORS_EXPECTED = {"kill9"}


def cmd_errors(args):
    """Exit 1 when a run of a scenario other than kill9 saw errors (non-2xx responses,
    socket errors) or could not be parsed; prints one line per such target."""
    bad = {}
    with open(args[0], encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            scenario, target, _rnd, path = (line.split("\t") + [""] * 4)[:4]
            if scenario in ERRORS_EXPECTED:
                continue
            r = parse_wrk(path)
            errors = (r["non2xx"] + r["socket"]) if r["ok"] else None
            key = (scenario, target)
            if errors is None:
                bad.setdefault(key, []).append("unparsable run")
            elif errors:
                bad.setdefault(key, []).append(f"{errors} errors")
    for (scenario, target), what in sorted(bad.items()):
        print(f"errors: scenario {scenario}, target {target}: {', '.join(what)}",
              file=sys.stderr)
    return 1 if bad else 0


def cmd_table(args):
    rows = []
    with open(args[0], encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            scenario, target, rnd, path, ticks, clk, note, uticks, sysc = (
                line.split("\t") + [""] * 9)[:9]
            rows.append({"scenario": scenario, "target": target, "round": int(rnd),
                         "wrk": parse_wrk(path), "ticks": ticks, "clk": clk, "note": note,
                         "uticks": uticks, "syscalls": sysc})

    env = os.environ
    ncpu, model = machine_info()
    print("### Load comparison")
    print()
    print(f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')}")
    print(f"- machine: nproc {ncpu}, CPU {model}, kernel {platform.release()}")
    for key, label in (("BENCH_SETUP", "setup"), ("BENCH_VERSIONS", "versions"),
                       ("BENCH_SKIPPED", "skipped")):
        if env.get(key):
            print(f"- {label}: {env[key]}")

    scenarios = []
    for r in rows:
        if r["scenario"] not in scenarios:
            scenarios.append(r["scenario"])
    for scenario in scenarios:
        srows = [r for r in rows if r["scenario"] == scenario]
        order = target_order()
        targets = sorted({r["target"] for r in srows},
                         key=lambda t: order.index(t) if t in order else 99)
        desc = env.get(f"BENCH_DESC_{scenario}", "")
        print()
        print(f"#### Scenario `{scenario}`" + (f": {desc}" if desc else ""))
        print()
        with_sys = any(r["syscalls"] not in ("", "-") for r in srows)
        print("| target | median req/s | p50 | p99 | CPU µs/req | user µs/req | "
              + ("syscalls/req | " if with_sys else "") + "errors |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | " + ("---: | " if with_sys else "") + "---: |")
        summary = {}
        for t in targets:
            trows = sorted((r for r in srows if r["target"] == t), key=lambda r: r["round"])
            good = [r for r in trows if r["wrk"]["ok"]]
            rps = median([r["wrk"]["rps"] for r in good])
            p50 = median([r["wrk"]["p50"] for r in good])
            p99 = median([r["wrk"]["p99"] for r in good])
            cpu = median([cpu_us_per_req(r["ticks"], r["clk"], r["wrk"]["requests"]) for r in good])
            ucpu = median([cpu_us_per_req(r["uticks"], r["clk"], r["wrk"]["requests"]) for r in good])
            sysc = median([int(r["syscalls"]) / r["wrk"]["requests"] for r in good
                           if r["syscalls"].isdigit() and r["wrk"]["requests"]])
            non2xx = sum(r["wrk"]["non2xx"] for r in trows)
            sock = sum(r["wrk"]["socket"] for r in trows)
            failed = len(trows) - len(good)
            err = f"{non2xx + sock}"
            if non2xx + sock:
                err += f" (non-2xx {non2xx}, socket {sock})"
            if failed:
                err += f"; {failed} run(s) unparsable"
            summary[t] = {"rps": rps, "cpu": cpu, "per_round": [r["wrk"]["rps"] for r in trows]}
            cpu_txt = fmt(cpu, 1) if t != "direct" else "n/a"
            ucpu_txt = fmt(ucpu, 1) if t != "direct" else "n/a"
            sys_txt = ((fmt(sysc, 2) if t != "direct" else "n/a") + " | ") if with_sys else ""
            print(f"| {t} | {fmt(rps, 0)} | {fmt_ms(p50)} | {fmt_ms(p99)} | {cpu_txt} | "
                  f"{ucpu_txt} | {sys_txt}{err} |")
        print()
        print("Ratios (same run):")
        print()
        pairs = [("req/s", "rps", "drover", "nginx"), ("req/s", "rps", "drover", "haproxy"),
                 ("req/s", "rps", "drover", "direct"), ("CPU µs/req", "cpu", "drover", "nginx"),
                 ("CPU µs/req", "cpu", "drover", "haproxy")]
        for v in variants():
            pairs += [("req/s", "rps", v, "drover"), ("CPU µs/req", "cpu", v, "drover"),
                      ("req/s", "rps", v, "nginx")]
        any_ratio = False
        for label, key, a, b in pairs:
            va = summary.get(a, {}).get(key)
            vb = summary.get(b, {}).get(key)
            if va is not None and vb:
                any_ratio = True
                print(f"- {label} {a}/{b}: {va / vb:.2f}")
        if not any_ratio:
            print("- (needs drover and at least one other target)")
        print()
        print("Per-round req/s (interleaved, in run order): " + "; ".join(
            f"{t} " + " / ".join(fmt(x, 0) for x in summary[t]["per_round"]) for t in targets))
        notes = [f"{r['target']} r{r['round']}: {r['note']}" for r in srows if r["note"]]
        if notes:
            print()
            print("Events: " + "; ".join(notes))
    return 0


def cmd_drover_healthy(_args):
    try:
        status = json.load(sys.stdin)
    except ValueError:
        return 1
    backends = status.get("backends") or []
    if backends and all(b.get("state") == "healthy" for b in backends):
        return 0
    return 1


def yaml_blocks(text):
    """(key or None, lines) per top-level block; a block runs until the next top-level key."""
    blocks = [(None, [])]
    for line in text.splitlines():
        m = TOP_KEY.match(line)
        if m:
            blocks.append((m.group(1), [line]))
        else:
            blocks[-1][1].append(line)
    return blocks


def cmd_merge(args):
    with open(args[0], encoding="utf-8") as f:
        base = yaml_blocks(f.read())
    with open(args[1], encoding="utf-8") as f:
        extra = yaml_blocks(f.read())
    extra_keys = {k: lines for k, lines in extra if k is not None}
    bad = sorted(PROTECTED_KEYS & extra_keys.keys())
    if bad:
        print(f"{args[1]}: the harness sets these top-level keys itself: {', '.join(bad)}",
              file=sys.stderr)
        return 1
    out = []
    for k, lines in base:
        if k in extra_keys:
            out.append(f"# ---- `{k}` replaced from {args[1]}")
            out.extend(extra_keys.pop(k))
        else:
            out.extend(lines)
    if extra_keys:
        out.append(f"# ---- appended from {args[1]}")
        for k, lines in extra:
            if k in extra_keys:
                out.extend(lines)
    print("\n".join(out))
    return 0


COOKIE_PAIR = re.compile(r"^[A-Za-z0-9_.-]+=[!#-+\--:<-\[\]-~]*$")


def cmd_cookies(args):
    import http.client
    from urllib.parse import urlsplit
    url, n = urlsplit(args[0]), int(args[1])
    conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=5)
    path = url.path or "/"
    for i in range(n):
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        cookie = resp.getheader("Set-Cookie")
        if not cookie:
            if i == 0:
                return 3
            print(f"response {i + 1} of {n} set no cookie", file=sys.stderr)
            return 1
        pair = cookie.split(";", 1)[0].strip()
        if not COOKIE_PAIR.match(pair):
            print(f"unexpected Set-Cookie {cookie!r}", file=sys.stderr)
            return 1
        print(pair)
    return 0


def cmd_lua(args):
    with open(args[0], encoding="utf-8") as f:
        cookies = [c.strip() for c in f if c.strip()]
    if not cookies or not all(COOKIE_PAIR.match(c) for c in cookies):
        print(f"{args[0]}: no usable cookies", file=sys.stderr)
        return 1
    body = ",\n".join(f'  "{c}"' for c in cookies)
    print(f"""-- generated by benches/load/report.py: one Cookie header per request, in turn
local cookies = {{
{body}
}}
local reqs = {{}}
local i = 0
init = function(args)
  for k, c in ipairs(cookies) do
    reqs[k] = wrk.format(nil, nil, {{ ["Cookie"] = c }})
  end
end
request = function()
  i = i + 1
  if i > #reqs then i = 1 end
  return reqs[i]
end""")
    return 0


def cmd_post_lua(args):
    """A wrk script that POSTs a body of N bytes (application/octet-stream): with a
    Content-Length, or, given PIECES, chunked in PIECES equal chunks."""
    n = int(args[0])
    if len(args) > 1:
        pieces = int(args[1])
        size = n // pieces
        # wrk.format adds Content-Length only for a body it is given, so the head is
        # formatted without one and the chunked body appended as raw bytes.
        print(f"""local chunk = string.format("%x\\r\\n", {size}) .. string.rep("x", {size}) .. "\\r\\n"
local body = string.rep(chunk, {pieces}) .. "0\\r\\n\\r\\n"
local req = nil
request = function()
  if req == nil then
    req = wrk.format("POST", nil, {{["Content-Type"] = "application/octet-stream",
                                   ["Transfer-Encoding"] = "chunked"}}, nil) .. body
  end
  return req
end""")
        return 0
    print(f"""wrk.method = "POST"
wrk.body = string.rep("x", {n})
wrk.headers["Content-Type"] = "application/octet-stream"
""")
    return 0


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd = {"line": cmd_line, "table": cmd_table, "drover-healthy": cmd_drover_healthy,
           "merge": cmd_merge, "cookies": cmd_cookies, "lua": cmd_lua,
           "errors": cmd_errors, "post-lua": cmd_post_lua}.get(argv[1])
    if cmd is None:
        print(f"unknown subcommand {argv[1]!r}", file=sys.stderr)
        return 2
    return cmd(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
