#!/usr/bin/env python3
"""Cold-read benchmark that sees the client side: throughput and CPU per
object and per GiB of the daemon and of the client process, for sluice and
for boto3, s3dlio, obstore and s3torchconnector, against one or more origins
(a static nginx on loopback, and s3s-fs), in one run.

Run through tests/bench/cold.sh, which starts the origins, generates the data
and sets the environment. It reuses python_peers.py: the same libraries
driven the same way, the same checks of every object (size and a strided
checksum against the local copy), the same fresh daemon per library and set.
What this driver adds:

- per set its own concurrency (4000 x 128 KiB: 64 in flight; 32 x 32 MiB:
  8 in flight);
- CPU seconds of every pass, read from /proc/<pid>/stat (utime + stime) before
  and after it: the client process (with its live descendants, such as
  DataLoader workers, and its reaped children), the daemon, and the origin;
- a DataLoader epoch with 2 workers, batch 32, for sluice (SluiceMapDataset)
  and s3torchconnector (S3MapDataset), each after a warm-up batch of two tiny
  objects (warm/) that starts the worker processes and their clients, so the
  epoch times reading and not process start-up;
- sluice's get_many and DataLoader passes start after the same warm-up read
  through the daemon (its SDK and first connection set up; every object of
  the set is still cold);
- a profile of the daemon (perf record) during one more cold pass of
  sluice's 128 KiB set on a fresh daemon, after the measured passes, so that
  sampling never slows a measured pass; a text summary next to the data.

Modes:
  cold.py check-origin --endpoint URL
      asserts that the origin answers what sluice and the peers need: HEAD,
      a ranged GET (206 + Content-Range), If-Match (206 when it matches, 412
      when not).
  cold.py prepare --endpoint URL --files DIR    (an S3 server: upload)
  cold.py run --origin NAME URL PID [--origin ...] --files DIR --work DIR --sluiced BIN
  cold.py worker ...                            (internal)

MiB are 2^20 bytes, GiB 2^30.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import python_peers as pp  # noqa: E402

# warm/ holds two tiny objects for the warm-up reads.
pp.SETS = ("large", "small", "warm")
SETS = ("large", "small")
BUCKET = pp.BUCKET
MiB = 1 << 20
GiB = 1 << 30
TICK = os.sysconf("SC_CLK_TCK")

# Object-read libraries (every set) and DataLoader libraries (the small set).
OBJECT_LIBS = ("sluice", "boto3", "s3dlio", "obstore", "s3torchconnector-client")
LOADER_LIBS = ("sluice-dataloader", "s3torchconnector")
LIBS = OBJECT_LIBS + LOADER_LIBS
GROUP = {lib: ("dataloader" if lib in LOADER_LIBS else "objects") for lib in LIBS}
DEFAULT_CONCURRENCY = {"small": 64, "large": 8}


# --------------------------------------------------------------------------
# CPU accounting from /proc
# --------------------------------------------------------------------------


def stat_cpu(pid: int, with_children: bool) -> float:
    """utime + stime (and cutime + cstime: reaped children) of pid, seconds;
    0 for a process that is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return 0.0
    # Fields after "(comm)": state is field 3, utime 14 ... cstime 17.
    rest = s[s.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(x) for x in rest[11:15])
    ticks = utime + stime + (cutime + cstime if with_children else 0)
    return ticks / TICK


def descendants(pid: int) -> list[int]:
    out = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


def client_cpu() -> float:
    """This process, its live descendants and its reaped children."""
    me = os.getpid()
    return stat_cpu(me, True) + sum(stat_cpu(p, True) for p in descendants(me))


_PIDS: dict[str, int] = {}


def measured_timed_pass(label, keys, expected, body):
    """python_peers.timed_pass plus the CPU of client, daemon and origin."""
    d = _PIDS.get("daemon")
    o = _PIDS.get("origin")
    c0 = client_cpu()
    d0 = stat_cpu(d, False) if d else None
    o0 = stat_cpu(o, False) if o else None
    r = _orig_timed_pass(label, keys, expected, body)
    r["client_cpu_s"] = client_cpu() - c0
    if d:
        r["daemon_cpu_s"] = stat_cpu(d, False) - d0
    if o:
        r["origin_cpu_s"] = stat_cpu(o, False) - o0
    return r


_orig_timed_pass = pp.timed_pass
pp.timed_pass = measured_timed_pass


# --------------------------------------------------------------------------
# the libraries this driver adds or drives differently
# --------------------------------------------------------------------------


def warm_keys(a) -> list[str]:
    with open(a.expected) as f:
        return sorted(json.load(f)["warm"])


def warm_up_daemon(a) -> None:
    import sluice

    client = sluice.Client(a.address)
    for k in warm_keys(a):
        with client.get(f"s3://{BUCKET}/{k}") as buf:
            pp.touch(buf)
    del client


def run_sluice(a, keys, expected, sizes):
    warm_up_daemon(a)
    return pp.run_sluice(a, keys, expected, sizes)


class SluiceTouch:
    """SluiceMapDataset transform: touch the leased bytes in the worker and
    return (key, size, strided sum); the lease ends when it returns."""

    def __call__(self, buffer):
        key = buffer.meta.uri[len(f"s3://{BUCKET}/") :]
        return (key, *pp.touch(buffer))


class Indices:
    """A sampler whose indices the main process sets before each epoch."""

    def __init__(self):
        self.indices: list[int] = []

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def as_list(batch):
    return batch


def loader_passes(a, dataset, n_warm, keys, expected, first_label, later_label, passes):
    from torch.utils.data import DataLoader

    sampler = Indices()
    loader = DataLoader(
        dataset,
        batch_size=a.batch_size,
        sampler=sampler,
        num_workers=a.workers,
        persistent_workers=True,
        collate_fn=as_list,
    )
    # Warm-up batch: starts the workers (and their clients) on two tiny
    # objects that are not part of the set.
    sampler.indices = list(range(n_warm))
    for batch in loader:
        for _ in batch:
            pass
    sampler.indices = list(range(n_warm, n_warm + len(keys)))

    def body(keys, checker):
        for batch in loader:
            for key, size, ssum in batch:
                checker.add(key, size, ssum)

    out = [pp.timed_pass(first_label, keys, expected, body)]
    for _ in range(passes - 1):
        out.append(pp.timed_pass(later_label, keys, expected, body))
    return out


def run_sluice_dataloader(a, keys, expected, sizes):
    # docs/PYTHON.md: SluiceMapDataset in a DataLoader; each worker makes its
    # own Client from $SLUICE_ADDRESS; a batch is read with get_many.
    os.environ["SLUICE_ADDRESS"] = a.address
    import sluice
    from sluice.torch import SluiceMapDataset

    warm = warm_keys(a)
    warm_up_daemon(a)
    ds = SluiceMapDataset([f"s3://{BUCKET}/{k}" for k in warm + keys], transform=SluiceTouch())
    passes = loader_passes(a, ds, len(warm), keys, expected, "cold", "cached", 1 + a.cached_passes)
    method = f"SluiceMapDataset + DataLoader(num_workers={a.workers}, batch_size={a.batch_size})"
    return method, passes, {"sluice": sluice.__version__}


def run_s3tc_dataloader(a, keys, expected, sizes):
    # As python_peers.run_s3torchconnector (S3MapDataset, sequential reader),
    # with the DataLoader shape of this benchmark.
    import s3torchconnector
    import torch
    from s3torchconnector import S3MapDataset

    warm = warm_keys(a)
    ds = S3MapDataset.from_objects(
        [f"s3://{BUCKET}/{k}" for k in warm + keys],
        region=pp.REGION,
        endpoint=a.endpoint,
        transform=pp._TouchReader(),
        s3client_config=pp.s3tc_config(),
    )
    passes = loader_passes(a, ds, len(warm), keys, expected, "pass", "pass", a.peer_passes)
    method = f"S3MapDataset + DataLoader(num_workers={a.workers}, batch_size={a.batch_size}), sequential reader"
    return method, passes, {"s3torchconnector": s3torchconnector.__version__, "torch": torch.__version__}


RUNNERS = {
    "sluice": run_sluice,
    "boto3": pp.run_boto3,
    "s3dlio": pp.run_s3dlio,
    "obstore": pp.run_obstore,
    "s3torchconnector-client": pp.run_s3torchconnector_client,
    "sluice-dataloader": run_sluice_dataloader,
    "s3torchconnector": run_s3tc_dataloader,
}


def cmd_worker(a) -> None:
    import warnings

    warnings.filterwarnings("ignore", message="This DataLoader will create")
    if a.daemon_pid:
        _PIDS["daemon"] = a.daemon_pid
    if a.origin_pid:
        _PIDS["origin"] = a.origin_pid
    with open(a.expected) as f:
        expected = json.load(f)[a.set]
    keys = list(expected)
    sizes = {k: v[0] for k, v in expected.items()}
    method, passes, versions = RUNNERS[a.lib](a, keys, expected, sizes)
    print("RESULT " + json.dumps({"method": method, "passes": passes, "versions": versions}), flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# --------------------------------------------------------------------------
# check-origin
# --------------------------------------------------------------------------


def cmd_check_origin(a) -> None:
    """The origin must answer what the libraries send (fails loudly if not)."""
    u = urllib.parse.urlsplit(a.endpoint)
    path = f"/{BUCKET}/{a.key}"

    def ask(method, headers=None):
        deadline = time.time() + 30
        while True:
            try:
                c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
                c.request(method, path, headers=headers or {})
                r = c.getresponse()
                body = r.read()
                c.close()
                return r, body
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)

    def need(cond, what):
        if not cond:
            sys.exit(f"origin {a.endpoint} does not serve S3 reads: {what}")

    r, _ = ask("HEAD")
    need(r.status == 200, f"HEAD {path} answered {r.status}")
    size = int(r.getheader("Content-Length", "-1"))
    etag = r.getheader("ETag")
    need(size > 10 and etag, f"HEAD {path}: no Content-Length or ETag")
    r, body = ask("GET", {"Range": "bytes=2-9"})
    need(r.status == 206 and len(body) == 8, f"ranged GET answered {r.status}, {len(body)} bytes")
    need(r.getheader("Content-Range") == f"bytes 2-9/{size}", f"Content-Range {r.getheader('Content-Range')!r}")
    r, _ = ask("GET", {"Range": "bytes=0-0", "If-Match": etag})
    need(r.status == 206, f"GET with a matching If-Match answered {r.status}")
    r, _ = ask("GET", {"Range": "bytes=0-0", "If-Match": '"not-the-etag"'})
    if a.require_if_match:
        need(r.status == 412, f"GET with a stale If-Match answered {r.status}, not 412")
    elif r.status != 412:
        print(f"origin {a.endpoint}: ignores If-Match (the daemon compares ETags itself)")
    print(f"origin {a.endpoint}: HEAD, Range, If-Match ok")


# --------------------------------------------------------------------------
# run: the orchestrator
# --------------------------------------------------------------------------


def worker_cmd(a, lib, set_name, endpoint, expected_path, address, daemon_pid, origin_pid, cached_passes):
    cmd = [
        sys.executable, os.path.abspath(__file__), "worker",
        "--lib", lib, "--set", set_name,
        "--endpoint", endpoint,
        "--expected", expected_path,
        "--concurrency", str(a.concurrency[set_name]),
        "--workers", str(a.workers),
        "--batch-size", str(a.batch_size),
        "--peer-passes", str(a.peer_passes),
        "--cached-passes", str(cached_passes),
        "--origin-pid", str(origin_pid or 0),
        "--daemon-pid", str(daemon_pid or 0),
    ]
    if address:
        cmd += ["--address", address]
    return cmd


def run_worker(a, cmd) -> dict:
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=a.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {a.timeout} s"}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"error": f"exit {p.returncode}: {tail}", "stderr": p.stderr[-4000:]}


def new_daemon(a):
    d = pp.Daemon(a)
    d.sock = os.path.join(a.work, "cold.sock")
    d.pidfile = os.path.join(a.work, "cold.sluiced.pid")
    d.start()
    return d


def profile(a, origin, expected_path) -> dict:
    """perf record of a fresh daemon during a cold pass of the small set."""
    name, endpoint, opid = origin
    data = os.path.join(a.work, "cold.perf.data")
    txt = os.path.join(a.work, "cold.perf.txt")
    d = new_daemon(a)
    daemon_pid = d.proc.pid
    perf = None
    try:
        cg = a.perf_record_args.split()
        perf = subprocess.Popen(
            [a.perf, "record", *cg, "-p", str(d.proc.pid), "-o", data],
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(a.work, "cold.perf.log"), "w"),
        )
        with open(os.path.join(a.work, "cold.perf.pid"), "w") as f:
            f.write(str(perf.pid))
        deadline = time.time() + 30
        while not (os.path.exists(data) and os.path.getsize(data) > 0):
            if perf.poll() is not None:
                return {"error": f"perf record exited with {perf.returncode}; see {a.work}/cold.perf.log"}
            if time.time() > deadline:
                return {"error": "perf record did not start within 30 s"}
            time.sleep(0.05)
        cmd = worker_cmd(a, "sluice", "small", endpoint, expected_path, "unix://" + d.sock, d.proc.pid, opid, 0)
        res = run_worker(a, cmd)
    finally:
        if perf and perf.poll() is None:
            perf.send_signal(signal.SIGINT)
            try:
                perf.wait(120)
            except subprocess.TimeoutExpired:
                perf.kill()
                perf.wait()
        d.stop()
    if "error" in res:
        return {"error": "profiled pass: " + res["error"]}
    p = res["passes"][0]

    def report(*args):
        r = subprocess.run(
            [a.perf, "report", "-i", data, "--stdio", "--no-inline", *args],
            capture_output=True, text=True, timeout=1200,
        )
        # (IPC columns, "-" without hardware counters, dropped.)
        lines = [re.sub(r"(\s+-)+\s*$", "", l).rstrip()[:200] for l in r.stdout.splitlines()]
        return [l for l in lines if l.strip() and not l.startswith("#")], r.stderr

    def by_share(lines):
        def share(l):
            m = re.match(r"\s*([0-9.]+)%", l)
            return float(m.group(1)) if m else -1.0

        return sorted(lines, key=share, reverse=True)

    top, err = report("--no-children", "--sort", "dso,symbol", "-g", "none", "--percent-limit", "0.2")
    top = by_share(top)
    if not top:
        return {"error": f"perf report printed nothing: {err.strip()[-300:]}"}
    dsos, _ = report("--no-children", "--sort", "dso", "-g", "none")
    dsos = by_share(dsos)
    incl, _ = report("--children", "--sort", "symbol", "-g", "none", "--percent-limit", "2")
    # Runtime scaffolding (every task runs under it) says nothing.
    incl = [l for l in incl if not SCAFFOLD.search(l)]
    stacks, _ = report("--no-children", "--sort", "symbol", "--max-stack", "14",
                       "-g", "graph,0.5,callee,function,percent", "--percent-limit", "1")
    with open(txt, "w") as f:
        f.write(
            f"perf record {a.perf_record_args} of a fresh sluiced (pid {daemon_pid}) during a cold pass of "
            f"{p['objects']} x 128 KiB, window {a.concurrency['small']}, origin {name}: "
            f"{p['objps']:.0f} obj/s under the profiler, daemon CPU "
            f"{p.get('daemon_cpu_s', 0) / p['objects'] * 1e6:.0f} us/object\n\n"
        )
        f.write("== by DSO (self)\n" + "\n".join(dsos[:12]) + "\n\n")
        f.write(f"== top symbols (self, --no-children), first {a.perf_top}\n" + "\n".join(top[: a.perf_top]) + "\n\n")
        f.write("== inclusive (children, self), symbols above 2 % but the runtime's scaffolding, first 60\n"
                + "\n".join(incl[:60]) + "\n\n")
        f.write("== callers of the symbols above 1 % (self), callee first, 14 frames at most"
                " (user-space leaves in libc often do not unwind)\n"
                + "\n".join(stacks[:600]) + "\n")
    return {"summary": txt, "data": data, "top": top[: a.perf_top], "dsos": dsos[:12], "pass": p}


SCAFFOLD = re.compile(
    r"0xffffffffffffffff|tokio::runtime::|tokio::task::coop|std::thread::|std::sys::|std::panic|"
    r"core::panic|LocalKey|start_thread|\bclone3?\b|__rust_try|core::ops::function|"
    r"<core::pin::Pin<P> as core::future::future::Future>::poll|tokio::loom"
)


def per_obj(r, key):
    v = r.get(key)
    return None if v is None else v / r["objects"] * 1e6


def per_gib(r, key):
    v = r.get(key)
    return None if v is None else v / (r["bytes"] / GiB)


def cmd_run(a) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.makedirs(a.work, exist_ok=True)
    a.concurrency = {"small": a.small_concurrency, "large": a.large_concurrency}
    sets = [s for s in a.sets.split(",") if s]
    libs = [l for l in a.libs.split(",") if l]
    for l in libs:
        if l not in LIBS:
            sys.exit(f"unknown library {l!r}; known: {', '.join(LIBS)}")
    origins = [(n, u, int(p)) for n, u, p in a.origin]

    print(f"== checking the local copy of the data in {a.files}", flush=True)
    expected = pp.local_expectations(a.files)
    expected_path = os.path.join(a.work, "cold.expected.json")
    with open(expected_path, "w") as f:
        json.dump(expected, f)

    probe = subprocess.run([sys.executable, "-c", "import sluice"], capture_output=True, text=True)
    sluice_skip = None
    if probe.returncode != 0:
        tail = (probe.stderr.strip().splitlines() or ["?"])[-1]
        sluice_skip = f"the sluice package is not importable ({tail})"
    elif not os.access(a.sluiced, os.X_OK):
        sluice_skip = f"no sluiced binary at {a.sluiced!r}"

    rows, errors, versions = [], [], {}
    for name, endpoint, opid in origins:
        # sluiced (fresh for each library and set) reads this.
        os.environ["SLUICE_STORAGE__S3__ENDPOINT"] = endpoint
        for set_name in sets:
            exp = expected[set_name]
            total = sum(v[0] for v in exp.values())
            print(f"== origin {name}, set {set_name}: {len(exp)} objects, {total / MiB:.0f} MiB, "
                  f"{a.concurrency[set_name]} in flight", flush=True)
            for lib in libs:
                if GROUP[lib] == "dataloader" and set_name != "small":
                    continue
                if lib.startswith("sluice") and sluice_skip:
                    print(f"   {lib}: SKIPPED: {sluice_skip}", flush=True)
                    errors.append({"origin": name, "set": set_name, "library": lib, "error": "skipped: " + sluice_skip})
                    continue
                daemon = new_daemon(a) if lib.startswith("sluice") else None
                try:
                    cmd = worker_cmd(
                        a, lib, set_name, endpoint, expected_path,
                        "unix://" + daemon.sock if daemon else None,
                        daemon.proc.pid if daemon else None, opid, a.cached_passes,
                    )
                    res = run_worker(a, cmd)
                finally:
                    if daemon:
                        daemon.stop()
                if "error" in res:
                    print(f"   {lib}: FAILED: {res['error']}", flush=True)
                    if res.get("stderr"):
                        sys.stderr.write(res["stderr"] + "\n")
                    errors.append({"origin": name, "set": set_name, "library": lib, "error": res["error"]})
                    continue
                versions.update(res["versions"])
                for i, p in enumerate(res["passes"]):
                    rows.append({"origin": name, "set": set_name, "library": lib, "group": GROUP[lib],
                                 "method": res["method"], "index": i, **p})
                    cpu = f"client {per_obj(p, 'client_cpu_s'):6.0f}"
                    if "daemon_cpu_s" in p and lib.startswith("sluice"):
                        cpu += f"  daemon {per_obj(p, 'daemon_cpu_s'):6.0f}"
                    print(f"   {lib:24} {p['pass']:6} {p['bytes'] / MiB / p['seconds']:8.0f} MiB/s "
                          f"{p['objps']:8.0f} obj/s  CPU us/object: {cpu}  ({p['seconds']:.2f} s)", flush=True)

    prof = None
    if a.perf and (sluice_skip or "sluice" not in libs or "small" not in sets):
        print("== profile: left out (it profiles sluice on the small set)", flush=True)
    elif a.perf:
        first = origins[0]
        print(f"== profile: perf record {a.perf_record_args} of a fresh sluiced, cold pass of small, origin {first[0]}",
              flush=True)
        prof = profile(a, first, expected_path)
        if "error" in prof:
            print(f"!! profile: {prof['error']}", flush=True)
        else:
            print(f"   wrote {prof['summary']}", flush=True)

    summary = summarize(rows, origins, sets, libs)
    print_summary(a, summary, errors, prof)
    out = {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "origins": [{"name": n, "endpoint": u} for n, u, _ in origins],
        "concurrency": a.concurrency,
        "dataloader": {"workers": a.workers, "batch_size": a.batch_size},
        "peer_passes": a.peer_passes,
        "cached_passes": a.cached_passes,
        "versions": versions,
        "summary": summary,
        "passes": rows,
        "profile": prof,
        "errors": errors,
    }
    path = os.path.join(a.work, "cold.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print(f"== wrote {path}")
    if any(not e["error"].startswith("skipped") for e in errors):
        sys.exit(1)


def summarize(rows, origins, sets, libs):
    """sluice: its cold pass and its best cached pass; peers: best pass.
    Ratios against the best peer of the same origin, set and group."""
    out = []
    for name, _, _ in origins:
        for set_name in sets:
            for group in ("objects", "dataloader"):
                entries = []
                for lib in libs:
                    if GROUP[lib] != group:
                        continue
                    mine = [r for r in rows if r["origin"] == name and r["set"] == set_name and r["library"] == lib]
                    labels = ("cold", "cached") if lib.startswith("sluice") else ("pass",)
                    for label in labels:
                        cands = [r for r in mine if r["pass"] == label]
                        if cands:
                            r = max(cands, key=lambda r: r["objps"])
                            shown = f"{lib} ({label})" if label != "pass" else lib
                            entries.append((shown, r, not lib.startswith("sluice")))
                best = max((r["objps"] for _, r, peer in entries if peer), default=None)
                best_name = next((n for n, r, peer in entries if peer and r["objps"] == best), None)
                for shown, r, _ in entries:
                    out.append({
                        "origin": name,
                        "set": set_name,
                        "group": group,
                        "library": shown,
                        "method": r["method"],
                        "objects": r["objects"],
                        "bytes": r["bytes"],
                        "seconds": round(r["seconds"], 4),
                        "MiBps": round(r["bytes"] / MiB / r["seconds"], 1),
                        "objps": round(r["objps"], 1),
                        "ratio_to_best_peer": round(r["objps"] / best, 3) if best else None,
                        "best_peer": best_name,
                        "client_cpu_us_per_object": _round(per_obj(r, "client_cpu_s")),
                        "client_cpu_s_per_GiB": _round(per_gib(r, "client_cpu_s"), 3),
                        "daemon_cpu_us_per_object": _round(per_obj(r, "daemon_cpu_s"))
                        if r["library"].startswith("sluice") else None,
                        "daemon_cpu_s_per_GiB": _round(per_gib(r, "daemon_cpu_s"), 3)
                        if r["library"].startswith("sluice") else None,
                        "origin_cpu_us_per_object": _round(per_obj(r, "origin_cpu_s")),
                    })
    return out


def _round(v, n=0):
    return None if v is None else round(v, n)


def print_summary(a, summary, errors, prof):
    def f(v, fmt):
        return format(v, fmt) if v is not None else "-"

    print()
    print(f"== summary (MiB = 2^20 bytes; peers: best of {a.peer_passes} passes; sluice: cold = first pass of "
          f"a fresh daemon, cached = best of {a.cached_passes}; CPU from /proc/<pid>/stat, {1e3 / TICK:.0f} ms ticks)")
    print(f"   in flight: small {a.concurrency['small']}, large {a.concurrency['large']}; "
          f"DataLoader: {a.workers} workers, batch {a.batch_size}")
    hdr = (f"{'origin':7} {'set':5} {'library':30} {'MiB/s':>7} {'obj/s':>7} {'x best':>6}  "
           f"{'client us/obj':>13} {'client s/GiB':>12} {'daemon us/obj':>13} {'daemon s/GiB':>12} {'origin us/obj':>13}")
    print(hdr)
    print("-" * len(hdr))
    for s in summary:
        print(f"{s['origin']:7} {s['set']:5} {s['library']:30} {s['MiBps']:7.0f} {s['objps']:7.0f} "
              f"{f(s['ratio_to_best_peer'], '.2f'):>6}  "
              f"{f(s['client_cpu_us_per_object'], '.0f'):>13} {f(s['client_cpu_s_per_GiB'], '.2f'):>12} "
              f"{f(s['daemon_cpu_us_per_object'], '.0f'):>13} {f(s['daemon_cpu_s_per_GiB'], '.2f'):>12} "
              f"{f(s['origin_cpu_us_per_object'], '.0f'):>13}")
    for e in errors:
        print(f"!! {e['origin']} {e['set']} {e['library']}: {e['error']}")
    if prof and "top" in prof:
        print(f"\n== daemon profile, cold 128 KiB pass (top symbols, self): {prof['summary']}")
        for line in prof["top"]:
            print("   " + line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)

    p = sub.add_parser("check-origin")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--key", default="small/o-0")
    p.add_argument("--require-if-match", action="store_true", help="a stale If-Match must get 412")

    p = sub.add_parser("prepare")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--files", required=True)

    def common(p):
        p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
        p.add_argument("--batch-size", type=int, default=32, help="DataLoader batch size")
        p.add_argument("--peer-passes", type=int, default=2, help="passes per peer (the best is reported)")
        p.add_argument("--cached-passes", type=int, default=2, help="sluice passes after the cold one")

    p = sub.add_parser("run")
    common(p)
    p.add_argument("--origin", nargs=3, action="append", required=True, metavar=("NAME", "URL", "PID"))
    p.add_argument("--files", required=True, help="local copy of the data (DIR/large, DIR/small, DIR/warm)")
    p.add_argument("--work", required=True)
    p.add_argument("--sluiced", required=True)
    p.add_argument("--memory-budget", default="3GiB")
    p.add_argument("--sets", default="small,large")
    p.add_argument("--libs", default=",".join(LIBS))
    p.add_argument("--small-concurrency", type=int, default=DEFAULT_CONCURRENCY["small"])
    p.add_argument("--large-concurrency", type=int, default=DEFAULT_CONCURRENCY["large"])
    p.add_argument("--perf", default="", help="perf binary; empty: no profile")
    # Rust code here has no frame pointers: -g (frame pointers) gives leaf
    # symbols right but no stacks above them; DWARF unwinding does.
    p.add_argument("--perf-record-args", default="--call-graph dwarf,16384 -F 2000",
                   help="options of perf record, e.g. '-g' for frame-pointer stacks")
    p.add_argument("--perf-top", type=int, default=25)
    p.add_argument("--timeout", type=int, default=1800, help="seconds per library and set")

    p = sub.add_parser("worker")
    common(p)
    p.add_argument("--lib", required=True, choices=LIBS)
    p.add_argument("--set", required=True, choices=SETS)
    p.add_argument("--endpoint", required=True)
    p.add_argument("--expected", required=True)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--address")
    p.add_argument("--daemon-pid", type=int, default=0)
    p.add_argument("--origin-pid", type=int, default=0)

    a = ap.parse_args()
    if a.mode == "prepare":
        a.concurrency = 16
        pp.cmd_prepare(a)
        return
    {"check-origin": cmd_check_origin, "run": cmd_run, "worker": cmd_worker}[a.mode](a)


if __name__ == "__main__":
    main()
