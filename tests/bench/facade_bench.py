#!/usr/bin/env python3
"""S3-compatible facade benchmark: boto3 and s3torchconnector reading the
same objects straight from an S3-compatible server (s3s-fs) and through the
daemon's facade (facade bucket `bench` on that server's bucket `bench`).

Run through tests/bench/facade.sh, which starts s3s-fs and generates the
data. Each library runs in a fresh process (python_peers.py's worker: the
same client code, the same concurrency, every object's size and content
checked) once against s3s-fs and once against the facade of a fresh daemon,
so that its first pass through the facade is cold (empty cache) and the
second warm. Per pass: MB/s (10^6 bytes) and objects/s; ratios facade /
direct, against the best direct pass; and where the facade's GetObjects
found their bytes (sluice_facade_reads_total by source). A table on stdout,
the same as JSON in WORK/facade.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import python_peers  # noqa: E402  (the shared worker, data checks and upload)

LIBS = ("boto3", "s3torchconnector")
# The facade's own access key (made up for the benchmark, as an operator would).
FACADE_KEY = ("BENCHFACADEKEY", "bench-facade-secret")
SOURCES = ("cache", "backend", "coalesced", "uncached", "disk")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FacadeDaemon(python_peers.Daemon):
    """A fresh sluiced whose facade serves bucket `bench` = s3://bench/ of
    the daemon's default S3 endpoint (the same s3s-fs the direct runs use)."""

    def __init__(self, a) -> None:
        super().__init__(a)
        self.sock = os.path.join(a.work, "facade.sock")
        self.pidfile = os.path.join(a.work, "facade.sluiced.pid")  # for the shell's trap

    def start(self) -> None:
        a = self.a
        self.port, self.http = free_port(), free_port()
        for p in (self.sock, self.sock + ".fds"):
            if os.path.exists(p):
                os.unlink(p)
        keys = os.path.join(a.work, "facade-keys")
        with open(os.open(keys, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(f"{FACADE_KEY[0]} {FACADE_KEY[1]}\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        env.update(
            SLUICE_STORAGE__S3__ENDPOINT=a.endpoint,
            SLUICE_STORAGE__S3__FORCE_PATH_STYLE="true",
            SLUICE_STORAGE__S3__REGION=python_peers.REGION,
            SLUICE_FACADE__LISTEN=f"127.0.0.1:{self.port}",
            SLUICE_FACADE__KEYS_FILE=keys,
            SLUICE_FACADE__BUCKETS__BENCH=f"s3://{python_peers.BUCKET}/",
        )
        log = open(os.path.join(a.work, "facade.sluiced.log"), "ab")
        self.proc = subprocess.Popen(
            [
                a.sluiced,
                "--socket",
                self.sock,
                "--http",
                f"127.0.0.1:{self.http}",
                "--memory-budget",
                a.memory_budget,
                "--log-level",
                "warn",
            ],
            stdout=log,
            stderr=log,
            env=env,
        )
        with open(self.pidfile, "w") as f:
            f.write(str(self.proc.pid))
        deadline = time.time() + 30
        while not self._listening():
            if self.proc.poll() is not None:
                raise RuntimeError(f"sluiced exited with {self.proc.returncode}; see {log.name}")
            if time.time() > deadline:
                raise RuntimeError("the facade did not listen within 30 s")
            time.sleep(0.05)
        self.wait_prefaulted()

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def reads(self) -> dict[str, float]:
        """sluice_facade_reads_total by source, so far."""
        url = f"http://127.0.0.1:{self.http}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
        out = dict.fromkeys(SOURCES, 0.0)
        for line in text.splitlines():
            for s in SOURCES:
                if line.startswith(f'sluice_facade_reads_total{{source="{s}"}} '):
                    out[s] = float(line.split()[-1])
        return out


def run_lib(a, lib: str, set_name: str, expected: str, endpoint: str, key: tuple[str, str]) -> dict:
    """One python_peers worker: `lib` on `set_name` against `endpoint`."""
    wa = argparse.Namespace(**vars(a))
    wa.endpoint = endpoint
    env = dict(os.environ, AWS_ACCESS_KEY_ID=key[0], AWS_SECRET_ACCESS_KEY=key[1])
    cmd = python_peers.worker_cmd(wa, lib, set_name, expected, None)
    try:
        p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=a.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {a.timeout} s"}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"error": f"exit {p.returncode}: {tail}", "stderr": p.stderr[-4000:]}


def one_set(a, set_name: str, expected: str) -> list[dict]:
    rows = []
    direct_key = (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
    for lib in LIBS:
        direct = run_lib(a, lib, set_name, expected, a.endpoint, direct_key)
        daemon = FacadeDaemon(a)
        daemon.start()
        try:
            before = daemon.reads()
            facade = run_lib(
                a, lib, set_name, expected, f"http://127.0.0.1:{daemon.port}", FACADE_KEY
            )
            after = daemon.reads()
        finally:
            daemon.stop()
        sources = {s: int(after[s] - before[s]) for s in SOURCES if after[s] != before[s]}
        rows.append(
            {
                "set": set_name,
                "lib": lib,
                "direct": direct,
                "facade": facade,
                "facade_reads": sources,
            }
        )
        print(f"   {set_name} {lib}: done", flush=True)
    return rows


def report(rows: list[dict]) -> None:
    head = f"{'set':6} {'library':17} {'direct MB/s':>11} {'obj/s':>7} | {'facade cold':>11} {'ratio':>6} | {'facade warm':>11} {'ratio':>6} {'obj/s':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r["direct"] or "error" in r["facade"]:
            print(
                f"{r['set']:6} {r['lib']:17} error: {r['direct'].get('error') or r['facade'].get('error')}"
            )
            continue
        d = max(r["direct"]["passes"], key=lambda p: p["MBps"])
        cold, *warm = r["facade"]["passes"]
        w = max(warm, key=lambda p: p["MBps"]) if warm else cold
        print(
            f"{r['set']:6} {r['lib']:17} {d['MBps']:11.0f} {d['objps']:7.0f} | "
            f"{cold['MBps']:11.0f} {cold['MBps'] / d['MBps']:6.2f} | "
            f"{w['MBps']:11.0f} {w['MBps'] / d['MBps']:6.2f} {w['objps']:7.0f}"
        )
    for r in rows:
        if "method" in r["facade"]:
            print(
                f"  {r['set']} {r['lib']}: {r['facade']['method']}; facade GETs by source {r['facade_reads']}"
            )


def cmd_run(a) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.makedirs(a.work, exist_ok=True)
    expected_path = os.path.join(a.work, "facade.expected.json")
    with open(expected_path, "w") as f:
        json.dump(python_peers.local_expectations(a.files), f)
    rows = []
    for set_name in a.sets.split(","):
        rows += one_set(a, set_name, expected_path)
    with open(os.path.join(a.work, "facade.json"), "w") as f:
        json.dump({"args": vars(a), "rows": rows}, f, indent=1)
    report(rows)
    if any("error" in r["direct"] or "error" in r["facade"] for r in rows):
        sys.exit(1)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--endpoint", required=True, help="the S3-compatible server, e.g. http://127.0.0.1:9000"
    )
    ap.add_argument("--files", required=True, help="local copy of the data (DIR/large, DIR/small)")
    ap.add_argument("--work", required=True, help="where the JSON, socket and logs go")
    ap.add_argument("--sluiced", required=True, help="sluiced binary")
    ap.add_argument(
        "--memory-budget", default="3GiB", help="holds both sets: warm passes are all hits"
    )
    ap.add_argument("--sets", default="small,large")
    ap.add_argument(
        "--concurrency", type=int, default=16, help="boto3 threads (and pool connections)"
    )
    ap.add_argument("--workers", type=int, default=4, help="DataLoader workers of s3torchconnector")
    ap.add_argument(
        "--peer-passes", type=int, default=2, help="passes per run: the facade's first is cold"
    )
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per library, set and target")
    a = ap.parse_args()
    a.cached_passes = 0  # python_peers' worker wants it; unused by these libraries
    cmd_run(a)


if __name__ == "__main__":
    main()
