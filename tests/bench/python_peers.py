#!/usr/bin/env python3
"""Python read benchmark: sluice against boto3, s3dlio, obstore and
s3torchconnector on the same S3-compatible server, in one run.

Run through tests/bench/python_peers.sh, which starts s3s-fs, generates the
data and sets the environment. Modes:

  python_peers.py prepare --endpoint URL --files DIR
      create bucket `bench` and upload every file under DIR/large and
      DIR/small that is missing there (or has another size).
  python_peers.py run --endpoint URL --files DIR --work DIR --sluiced BIN
      the benchmark: for each set, sluice (fresh daemon: a cold pass, then
      cached passes), then every peer; a table on stdout and the same as JSON
      in WORK/python_peers.json.
  python_peers.py worker --lib LIB --set SET ...   (internal)
      one library on one set, in a fresh process, so that runtimes, thread
      pools and memory of one library never affect the next; prints one JSON
      line.

Every pass reads every object of the set once and touches one byte per 4 KiB
(a strided sum over the buffer), so nothing is skipped lazily. Each object's
size and strided sum are checked against the local copy of the data, so a
peer that returns wrong or short data fails instead of looking fast.
MB are 10^6 bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

BUCKET = "bench"
PAGE = 4096
SETS = ("large", "small")
PEERS = ("boto3", "s3dlio", "obstore", "s3torchconnector", "s3torchconnector-client")
LIBS = ("sluice",) + PEERS
REGION = "us-east-1"


# --------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------


def touch(obj) -> tuple[int, int]:
    """(size, sum of one byte per 4 KiB page) of any buffer-protocol object;
    the views are released before returning (sluice leases need that)."""
    with memoryview(obj) as mv:
        if mv.format == "B" and mv.ndim == 1:
            return mv.nbytes, sum(mv[::PAGE])
        with mv.cast("B") as flat:
            return flat.nbytes, sum(flat[::PAGE])


def local_expectations(files: str) -> dict[str, dict[str, list]]:
    """{set: {key: [size, strided sum]}} from the local copy of the data."""
    out: dict[str, dict[str, list]] = {}
    for set_name in SETS:
        d = os.path.join(files, set_name)
        names = sorted(os.listdir(d), key=lambda n: (len(n), n))
        entries = {}
        for n in names:
            with open(os.path.join(d, n), "rb") as f:
                data = f.read()
            entries[f"{set_name}/{n}"] = list(touch(data))
        out[set_name] = entries
    return out


class Checker:
    """Counts bytes and objects of one pass and checks each object."""

    def __init__(self, expected: dict[str, list]):
        self.expected = expected
        self.objects = 0
        self.bytes = 0
        self.seen: set[str] = set()

    def add(self, key: str, size: int, ssum: int) -> None:
        want = self.expected[key]
        if size != want[0]:
            raise AssertionError(f"{key}: got {size} bytes, expected {want[0]}")
        if ssum != want[1]:
            raise AssertionError(f"{key}: content differs from the uploaded object")
        if key in self.seen:
            raise AssertionError(f"{key}: delivered twice in one pass")
        self.seen.add(key)
        self.objects += 1
        self.bytes += size

    def finish(self) -> None:
        if self.objects != len(self.expected):
            raise AssertionError(f"{self.objects} objects read, expected {len(self.expected)}")


def timed_pass(label: str, keys: list[str], expected: dict, body) -> dict:
    checker = Checker(expected)
    t0 = time.perf_counter()
    body(keys, checker)
    seconds = time.perf_counter() - t0
    checker.finish()
    return {
        "pass": label,
        "objects": checker.objects,
        "bytes": checker.bytes,
        "seconds": seconds,
        "MBps": checker.bytes / 1e6 / seconds,
        "objps": checker.objects / seconds,
    }


# --------------------------------------------------------------------------
# the libraries, each driven the way its docs recommend for throughput
# --------------------------------------------------------------------------


def run_sluice(a, keys, expected, sizes):
    import sluice

    client = sluice.Client(a.address)
    uris = [f"s3://{BUCKET}/{k}" for k in keys]
    info = {}

    def body(keys, checker):
        # docs/PYTHON.md: "Many objects, a bounded window of reads in flight":
        # get_many(uris, ordered=..., window=N); completion order here.
        for idx, buf in client.get_many(uris, ordered=False, window=a.concurrency):
            with buf:
                if not info:
                    info["shared_memory"] = buf.shared_memory
                    info["zero_copy"] = buf.zero_copy
                checker.add(keys[idx], *touch(buf))

    passes = [timed_pass("cold", keys, expected, body)]
    for _ in range(a.cached_passes):
        passes.append(timed_pass("cached", keys, expected, body))
    method = f"Client.get_many(ordered=False, window={a.concurrency})"
    if info:
        method += ", shared memory" if info.get("shared_memory") else ", NOT shared memory"
    return method, passes, {"sluice": sluice.__version__, "sluice_path": os.path.dirname(sluice.__file__), **info}


def boto3_client(a):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=a.endpoint,
        region_name=REGION,
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=a.concurrency),
    )


def run_boto3(a, keys, expected, sizes):
    import io

    import boto3
    from boto3.s3.transfer import TransferConfig

    # boto3 guide, "File transfer configuration": download_fileobj with a
    # TransferConfig (multipart_threshold/multipart_chunksize/max_concurrency)
    # for large objects; for many small objects one shared (thread-safe)
    # client in a thread pool, with max_pool_connections raised to match.
    s3 = boto3_client(a)
    chunk = 8 * 1024 * 1024
    largest = max(sizes.values())
    if largest > chunk:
        parts = -(-largest // chunk)
        per_object = max(1, min(parts, a.concurrency))
        objects_at_once = max(1, a.concurrency // per_object)
        tc = TransferConfig(
            multipart_threshold=chunk,
            multipart_chunksize=chunk,
            max_concurrency=per_object,
        )

        def one(key):
            f = io.BytesIO()
            s3.download_fileobj(BUCKET, key, f, Config=tc)
            return key, touch(f.getbuffer())

        method = (
            f"download_fileobj, TransferConfig(8 MiB parts, max_concurrency={per_object}) "
            f"x {objects_at_once} objects at once, max_pool_connections={a.concurrency}"
        )
        threads = objects_at_once
    else:

        def one(key):
            body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            return key, touch(body)

        method = f"get_object in {a.concurrency} threads, max_pool_connections={a.concurrency}"
        threads = a.concurrency

    def body(keys, checker):
        with ThreadPoolExecutor(threads) as ex:
            for key, (size, ssum) in ex.map(one, keys):
                checker.add(key, size, ssum)

    passes = [timed_pass("pass", keys, expected, body) for _ in range(a.peer_passes)]
    return method, passes, {"boto3": boto3.__version__}


def run_s3dlio(a, keys, expected, sizes):
    # s3dlio docs (README "Configuration", PYTHON_API_GUIDE "Custom Endpoints"):
    # AWS_ENDPOINT_URL / AWS_REGION / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
    # path style is automatic with a custom endpoint. "Parallel Downloads":
    # s3dlio.get_many(uris, ...) with a concurrency knob (max_in_flight).
    os.environ["AWS_ENDPOINT_URL"] = a.endpoint
    os.environ.setdefault("AWS_REGION", REGION)
    import s3dlio

    uris = [f"s3://{BUCKET}/{k}" for k in keys]
    prefix = f"s3://{BUCKET}/"

    def body(keys, checker):
        for item in s3dlio.get_many(uris, max_in_flight=a.concurrency):
            uri, data = item
            checker.add(uri[len(prefix):], *touch(data))

    passes = [timed_pass("pass", keys, expected, body) for _ in range(a.peer_passes)]
    method = f"get_many(max_in_flight={a.concurrency})"
    return method, passes, {"s3dlio": s3dlio.__version__}


def run_obstore(a, keys, expected, sizes):
    # obstore docs, "Performance": many-request throughput is best with the
    # async API and many concurrent requests; S3Store(bucket, endpoint=...,
    # virtual_hosted_style_request=False, client_options={"allow_http": True})
    # for an S3-compatible server over http.
    import obstore as obs
    from obstore.store import S3Store

    store = S3Store(
        BUCKET,
        endpoint=a.endpoint,
        region=REGION,
        access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )

    async def all_of(keys, checker):
        sem = asyncio.Semaphore(a.concurrency)

        async def one(key):
            async with sem:
                resp = await obs.get_async(store, key)
                data = await resp.bytes_async()
            checker.add(key, *touch(data))

        await asyncio.gather(*(one(k) for k in keys))

    def body(keys, checker):
        asyncio.run(all_of(keys, checker))

    passes = [timed_pass("pass", keys, expected, body) for _ in range(a.peer_passes)]
    method = f"get_async + bytes_async, asyncio, {a.concurrency} in flight"
    return method, passes, {"obstore": obs.__version__}


def s3tc_config():
    from s3torchconnector import S3ClientConfig

    return S3ClientConfig(force_path_style=True)


class _TouchReader:
    """DataLoader transform: read the whole object in the worker, touch it and
    return only (key, size, sum), as a training job decodes in its workers."""

    def __call__(self, reader):
        data = reader.read()
        return (reader.key, *touch(data))


def run_s3torchconnector(a, keys, expected, sizes):
    # s3torchconnector README: S3MapDataset / S3IterableDataset handed to a
    # torch DataLoader with several worker processes; sequential reader (the
    # default, "best for processing entire objects"); endpoint= and
    # S3ClientConfig(force_path_style=True) for an S3-compatible server.
    import s3torchconnector
    import torch
    from s3torchconnector import S3MapDataset
    from torch.utils.data import DataLoader

    dataset = S3MapDataset.from_objects(
        [f"s3://{BUCKET}/{k}" for k in keys],
        region=REGION,
        endpoint=a.endpoint,
        transform=_TouchReader(),
        s3client_config=s3tc_config(),
    )
    loader = DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=a.workers,
        persistent_workers=True,
    )

    def body(keys, checker):
        for key, size, ssum in loader:
            checker.add(key, size, ssum)

    passes = [timed_pass("pass", keys, expected, body) for _ in range(a.peer_passes)]
    method = f"S3MapDataset + DataLoader(num_workers={a.workers}), sequential reader"
    return method, passes, {"s3torchconnector": s3torchconnector.__version__, "torch": torch.__version__}


def run_s3torchconnector_client(a, keys, expected, sizes):
    # The same library's S3Client used directly (README: "Direct method -
    # S3Client usage"), one get_object().read() per object in a thread pool
    # with the common concurrency.
    import s3torchconnector
    from s3torchconnector._s3client import S3Client

    client = S3Client(REGION, endpoint=a.endpoint, s3client_config=s3tc_config())

    def one(key):
        data = client.get_object(BUCKET, key).read()
        return key, touch(data)

    def body(keys, checker):
        with ThreadPoolExecutor(a.concurrency) as ex:
            for key, (size, ssum) in ex.map(one, keys):
                checker.add(key, size, ssum)

    passes = [timed_pass("pass", keys, expected, body) for _ in range(a.peer_passes)]
    method = f"S3Client.get_object().read() in {a.concurrency} threads"
    return method, passes, {"s3torchconnector": s3torchconnector.__version__}


RUNNERS = {
    "sluice": run_sluice,
    "boto3": run_boto3,
    "s3dlio": run_s3dlio,
    "obstore": run_obstore,
    "s3torchconnector": run_s3torchconnector,
    "s3torchconnector-client": run_s3torchconnector_client,
}


def cmd_worker(a) -> None:
    import warnings

    # torch warns that 8 DataLoader workers exceed a 2-core machine's count.
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    with open(a.expected) as f:
        expected = json.load(f)[a.set]
    keys = list(expected)
    sizes = {k: v[0] for k, v in expected.items()}
    method, passes, versions = RUNNERS[a.lib](a, keys, expected, sizes)
    print("RESULT " + json.dumps({"method": method, "passes": passes, "versions": versions}), flush=True)
    # Leave at once: some runtimes take long to wind down (DataLoader workers,
    # CRT and tokio thread pools); nothing is left to flush.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# --------------------------------------------------------------------------
# prepare: bucket and upload
# --------------------------------------------------------------------------


def cmd_prepare(a) -> None:
    s3 = boto3_client(a)
    for _ in range(200):
        try:
            s3.list_buckets()
            break
        except Exception:
            time.sleep(0.1)
    try:
        s3.create_bucket(Bucket=BUCKET)
    except Exception as e:  # already there
        if "BucketAlreadyOwnedByYou" not in str(e) and "BucketAlreadyExists" not in str(e):
            raise
    have = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for o in page.get("Contents", []):
            have[o["Key"]] = (o["Size"], o.get("ETag", "").strip('"'))
    def stale(key):
        """Whether the bucket lacks the local file's content under key."""
        path = os.path.join(a.files, key)
        size, etag = have.get(key, (None, ""))
        if size != os.path.getsize(path):
            return True
        if not etag:  # some servers (s3s-fs) list no ETag
            etag = s3.head_object(Bucket=BUCKET, Key=key).get("ETag", "").strip('"')
        if len(etag) != 32:  # not the MD5 of a single-part upload: trust the size
            return False
        with open(path, "rb") as f:
            return hashlib.md5(f.read()).hexdigest() != etag

    keys = [f"{s}/{n}" for s in SETS for n in os.listdir(os.path.join(a.files, s))]
    with ThreadPoolExecutor(16) as ex:
        todo = [k for k, bad in zip(keys, ex.map(stale, keys)) if bad]

    def up(key):
        with open(os.path.join(a.files, key), "rb") as f:
            s3.put_object(Bucket=BUCKET, Key=key, Body=f.read())

    with ThreadPoolExecutor(16) as ex:
        list(ex.map(up, todo))
    print(f"uploaded {len(todo)} objects to {a.endpoint}/{BUCKET} ({len(have)} were there)")


# --------------------------------------------------------------------------
# run: the orchestrator
# --------------------------------------------------------------------------


class Daemon:
    """A sluiced of our own, fresh for each set so that its first pass is cold."""

    def __init__(self, a):
        self.a = a
        self.sock = os.path.join(a.work, "python_peers.sock")
        self.pidfile = os.path.join(a.work, "python_peers.sluiced.pid")  # for the shell's trap
        self.proc = None

    def start(self) -> None:
        for p in (self.sock, self.sock + ".fds"):
            if os.path.exists(p):
                os.unlink(p)
        log = open(os.path.join(self.a.work, "python_peers.sluiced.log"), "ab")
        # sluiced rejects unknown SLUICE_* variables (SLUICE_ADDRESS is the
        # client's): pass on only its configuration sections.
        sections = ("SERVER", "STORAGE", "ENGINE", "CACHE", "READ", "WRITE", "SESSION", "LOG")
        env = {
            k: v for k, v in os.environ.items()
            if not k.startswith("SLUICE_") or k[len("SLUICE_"):].split("__")[0] in sections
        }
        self.proc = subprocess.Popen(
            [
                self.a.sluiced,
                "--socket", self.sock,
                "--http", "127.0.0.1:0",
                "--memory-budget", self.a.memory_budget,
                "--log-level", "warn",
            ],
            stdout=log,
            stderr=log,
            env=env,
        )
        with open(self.pidfile, "w") as f:
            f.write(str(self.proc.pid))
        deadline = time.time() + 30
        while not (os.path.exists(self.sock) and os.path.exists(self.sock + ".fds")):
            if self.proc.poll() is not None:
                raise RuntimeError(f"sluiced exited with {self.proc.returncode}; see {log.name}")
            if time.time() > deadline:
                raise RuntimeError("sluiced did not open its socket within 30 s")
            time.sleep(0.05)
        self.wait_prefaulted()

    def wait_prefaulted(self) -> None:
        """Waits until the arena is resident (cache.prefault, on by default),
        as on a node where the daemon has been up for a few seconds: cold
        passes then measure reads, not the daemon's first seconds."""
        if os.environ.get("SLUICE_CACHE__PREFAULT", "true").lower() in ("false", "0", "no"):
            return
        units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 1000, "mb": 10**6, "gb": 10**9, "b": 1}
        text = self.a.memory_budget.strip().lower()
        unit = next((u for u in units if text.endswith(u)), "b")
        budget = int(float(text[: len(text) - len(unit)] or text) * units[unit])
        deadline = time.time() + 300
        last, still_since = -1, time.time()
        while (now := self.rss_shmem()) < budget:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sluiced exited with {self.proc.returncode}")
            if time.time() > deadline:
                raise RuntimeError("the arena was not resident within 300 s")
            if now != last:
                last, still_since = now, time.time()
            elif time.time() - still_since > 5:
                return  # not growing: a daemon without cache.prefault
            time.sleep(0.1)

    def rss_shmem(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("RssShmem:"):
                    return int(line.split()[1]) * 1024
        return 0

    def peak_rss(self) -> str | None:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            return None
        return None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if os.path.exists(self.pidfile):
            os.unlink(self.pidfile)


def worker_cmd(a, lib: str, set_name: str, expected_path: str, address: str | None) -> list[str]:
    cmd = [
        sys.executable, os.path.abspath(__file__), "worker",
        "--lib", lib, "--set", set_name,
        "--endpoint", a.endpoint,
        "--expected", expected_path,
        "--concurrency", str(a.concurrency),
        "--workers", str(a.workers),
        "--peer-passes", str(a.peer_passes),
        "--cached-passes", str(a.cached_passes),
    ]
    if address:
        cmd += ["--address", address]
    return cmd


def run_worker(a, lib, set_name, expected_path, address=None) -> dict:
    cmd = worker_cmd(a, lib, set_name, expected_path, address)
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=a.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {a.timeout} s"}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"error": f"exit {p.returncode}: {tail}", "stderr": p.stderr[-4000:]}


def cmd_run(a) -> None:
    # Unwind (and stop our sluiced) on SIGTERM as on Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.makedirs(a.work, exist_ok=True)
    sets = [s for s in a.sets.split(",") if s]
    libs = [l for l in a.libs.split(",") if l]
    for l in libs:
        if l not in LIBS:
            sys.exit(f"unknown library {l!r}; known: {', '.join(LIBS)}")

    print(f"== checking the local copy of the data in {a.files}", flush=True)
    expected = local_expectations(a.files)
    expected_path = os.path.join(a.work, "python_peers.expected.json")
    with open(expected_path, "w") as f:
        json.dump(expected, f)

    sluice_skip = None
    if "sluice" in libs:
        probe = subprocess.run([sys.executable, "-c", "import sluice"], capture_output=True, text=True)
        if probe.returncode != 0:
            tail = (probe.stderr.strip().splitlines() or ["?"])[-1]
            sluice_skip = f"the sluice package is not importable ({tail}); install it with pip install ./client-py"
        elif not (a.sluiced and os.access(a.sluiced, os.X_OK)):
            sluice_skip = f"no sluiced binary (--sluiced {a.sluiced!r})"

    rows = []
    errors = []
    versions = {}
    rss = {}
    for set_name in sets:
        exp = expected[set_name]
        total = sum(v[0] for v in exp.values())
        print(f"== set {set_name}: {len(exp)} objects, {total / 1e6:.0f} MB", flush=True)
        for lib in libs:
            if lib == "sluice" and sluice_skip:
                print(f"   sluice: SKIPPED: {sluice_skip}", flush=True)
                errors.append({"set": set_name, "library": lib, "error": "skipped: " + sluice_skip})
                continue
            daemon = None
            address = None
            if lib == "sluice":
                daemon = Daemon(a)
                daemon.start()
                address = "unix://" + daemon.sock
            try:
                res = run_worker(a, lib, set_name, expected_path, address)
                if daemon:
                    rss[set_name] = daemon.peak_rss()
            finally:
                if daemon:
                    daemon.stop()
            if "error" in res:
                print(f"   {lib}: FAILED: {res['error']}", flush=True)
                if res.get("stderr"):
                    sys.stderr.write(res["stderr"] + "\n")
                errors.append({"set": set_name, "library": lib, "error": res["error"]})
                continue
            versions.update(res["versions"])
            for i, p in enumerate(res["passes"]):
                rows.append({"set": set_name, "library": lib, "method": res["method"], "index": i, **p})
                print(
                    f"   {lib:24} {p['pass']:6} {p['MBps']:9.0f} MB/s {p['objps']:9.0f} obj/s"
                    f"  ({p['objects']} objects, {p['seconds']:.2f} s)",
                    flush=True,
                )

    # Summary: sluice cold (its one pass), sluice cached (best cached pass),
    # each peer's best pass; ratios to the best peer of the set.
    summary = []
    for set_name in sets:
        def best(lib, label):
            cands = [r for r in rows if r["set"] == set_name and r["library"] == lib and r["pass"] == label]
            return max(cands, key=lambda r: r["MBps"]) if cands else None

        entries = []
        for lib in libs:
            if lib == "sluice":
                for label in ("cold", "cached"):
                    r = best(lib, label)
                    if r:
                        entries.append((f"sluice ({label})", r, False))
            else:
                r = best(lib, "pass")
                if r:
                    entries.append((lib, r, True))
        peer_best = max((r["MBps"] for _, r, is_peer in entries if is_peer), default=None)
        best_peer_name = next((n for n, r, p in entries if p and r["MBps"] == peer_best), None)
        for name, r, is_peer in entries:
            summary.append({
                "set": set_name,
                "library": name,
                "method": r["method"],
                "objects": r["objects"],
                "bytes": r["bytes"],
                "seconds": round(r["seconds"], 4),
                "MBps": round(r["MBps"], 1),
                "objps": round(r["objps"], 1),
                "ratio_to_best_peer": round(r["MBps"] / peer_best, 3) if peer_best else None,
                "best_peer": best_peer_name,
            })

    conc_note = (
        f"concurrency {a.concurrency}: sluice get_many window, boto3 max_pool_connections and "
        f"threads x TransferConfig.max_concurrency, s3dlio max_in_flight, obstore requests in flight, "
        f"s3torchconnector S3Client threads; s3torchconnector DataLoader: {a.workers} worker processes"
    )
    print()
    print(f"== summary (MB = 10^6 bytes; peers: best of {a.peer_passes} passes; "
          f"sluice: cold = first pass of a fresh daemon, cached = best of {a.cached_passes})")
    print(f"   {conc_note}")
    hdr = f"{'set':6} {'library':24} {'MB/s':>9} {'obj/s':>9} {'x best peer':>12}  method"
    print(hdr)
    print("-" * len(hdr))
    for s in summary:
        ratio = f"{s['ratio_to_best_peer']:.2f}" if s["ratio_to_best_peer"] is not None else "-"
        print(f"{s['set']:6} {s['library']:24} {s['MBps']:9.0f} {s['objps']:9.0f} {ratio:>12}  {s['method']}")
    for e in errors:
        print(f"!! {e['set']} {e['library']}: {e['error']}")
    for set_name, v in rss.items():
        if v:
            print(f"   sluiced peak RSS after the {set_name} set: {v}")

    out = {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "endpoint": a.endpoint,
        "concurrency": a.concurrency,
        "dataloader_workers": a.workers,
        "peer_passes": a.peer_passes,
        "cached_passes": a.cached_passes,
        "concurrency_note": conc_note,
        "sets": {s: {"objects": len(expected[s]), "bytes": sum(v[0] for v in expected[s].values())} for s in sets},
        "versions": versions,
        "sluiced_peak_rss": rss,
        "summary": summary,
        "passes": rows,
        "errors": errors,
    }
    path = os.path.join(a.work, "python_peers.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print(f"== wrote {path}")
    if any(not e["error"].startswith("skipped") for e in errors):
        sys.exit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)

    def common(p):
        p.add_argument("--endpoint", required=True, help="S3 endpoint URL, e.g. http://127.0.0.1:9000")
        p.add_argument("--concurrency", type=int, default=32, help="requests in flight where a knob exists")
        p.add_argument("--workers", type=int, default=8, help="DataLoader worker processes (s3torchconnector)")
        p.add_argument("--peer-passes", type=int, default=2, help="passes per peer (the best is reported)")
        p.add_argument("--cached-passes", type=int, default=2, help="sluice passes after the cold one")

    p = sub.add_parser("prepare")
    common(p)
    p.add_argument("--files", required=True)

    p = sub.add_parser("run")
    common(p)
    p.add_argument("--files", required=True, help="local copy of the data (DIR/large, DIR/small)")
    p.add_argument("--work", required=True, help="where the JSON, socket and logs go")
    p.add_argument("--sluiced", default="", help="sluiced binary")
    p.add_argument("--memory-budget", default="3GiB")
    p.add_argument("--sets", default="large,small")
    p.add_argument("--libs", default=",".join(LIBS))
    p.add_argument("--timeout", type=int, default=1800, help="seconds per library and set")

    p = sub.add_parser("worker")
    common(p)
    p.add_argument("--lib", required=True, choices=LIBS)
    p.add_argument("--set", required=True, choices=SETS)
    p.add_argument("--expected", required=True)
    p.add_argument("--address")

    a = ap.parse_args()
    {"prepare": cmd_prepare, "run": cmd_run, "worker": cmd_worker}[a.mode](a)


if __name__ == "__main__":
    main()
