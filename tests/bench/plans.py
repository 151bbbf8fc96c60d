#!/usr/bin/env python3
"""Epoch plans, prefetch and adaptive concurrency, against peers, on two
origins: s3s-fs on loopback, and the same server behind a proxy that adds
object-store latency to every request (tests/src/bin/latency_proxy.rs).

Run through tests/bench/plans.sh, which builds, generates and uploads the
data, and starts the origin and the proxy. Per origin:

1. **Data stall per epoch.** A DataLoader (2 workers, shuffled, batch 32 of
   the 128 KiB set or 1 of the 32 MiB set) with a fixed simulated step per
   batch (a sleep: the GPU's time, no CPU): the seconds the loop waited for
   its next batch, in total and after the first batch (worker start-up).
   sluice with its epoch plan (SluiceIterableDataset, the default), sluice
   without (plan=False: only the client's own window reads ahead),
   s3torchconnector's S3MapDataset and a boto3 map dataset. Each sluice run
   starts a fresh daemon: the epoch is cold.
2. **Three epochs of a dataset twice the cache** (the 128 KiB set, a cache
   of half of it): per epoch the cache hit ratio and the bytes read from
   the backend, cache.policy = lru without plans, and plans with plans.
3. **Cold reads**: every object of each set once through sluice's
   get_many, and through obstore (asyncio, the same number in flight).

Writes WORK/plans.json and prints a summary.

Modes:
  plans.py run --origin NAME URL [--origin ...] --files DIR --work DIR --sluiced BIN
  plans.py loader ...     (internal: one DataLoader run in its own process)
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
import python_peers as pp  # noqa: E402

BUCKET = pp.BUCKET
MiB = 1 << 20
LOADER_MODES = ("sluice-plan", "sluice-noplan", "s3torchconnector", "boto3")
BATCH = {"small": 32, "large": 1}
CONCURRENCY = {"small": 64, "large": 8}


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Daemon:
    """A fresh sluiced on its own socket, with its metrics on a known port."""

    def __init__(self, a, budget: str, env: dict[str, str]):
        self.sock = os.path.join(a.work, "plans.sock")
        self.port = free_port()
        for p in (self.sock, self.sock + ".fds"):
            if os.path.exists(p):
                os.unlink(p)
        sections = ("SERVER", "STORAGE", "ENGINE", "CACHE", "PREFETCH", "READ", "WRITE", "SESSION", "LOG")
        full = {
            k: v for k, v in os.environ.items()
            if not k.startswith("SLUICE_") or k[len("SLUICE_"):].split("__")[0] in sections
        }
        full.update(env)
        log = open(os.path.join(a.work, "plans.sluiced.log"), "ab")
        self.proc = subprocess.Popen(
            [a.sluiced, "--socket", self.sock, "--http", f"127.0.0.1:{self.port}",
             "--memory-budget", budget, "--log-level", "warn"],
            stdout=log, stderr=log, env=full,
        )
        deadline = time.time() + 60
        while True:
            try:
                self.metrics()
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"sluiced did not start; see {log.name}")
                time.sleep(0.05)
        # A node's daemon has been up a while: wait for its arena to be
        # resident (cache.prefault), so that cold passes time reads.
        want = self.metrics().get("sluice_memory_budget_bytes", 0)
        while self.metrics().get("sluice_memory_prefaulted_bytes", want) < want:
            time.sleep(0.1)

    @property
    def address(self) -> str:
        return f"unix://{self.sock}"

    def metrics(self) -> dict[str, float]:
        return scrape(f"http://127.0.0.1:{self.port}/metrics")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def backend_bytes(m: dict[str, float]) -> float:
    return sum(v for k, v in m.items() if k.startswith("sluice_backend_transferred_bytes_total") and 'direction="read"' in k)


# --------------------------------------------------------------------------
# one DataLoader run (its own process)
# --------------------------------------------------------------------------


class _Boto3Map:
    """A map dataset reading each object with boto3 (one client per worker)."""

    def __init__(self, endpoint: str, keys: list[str]):
        self.endpoint, self.keys, self.client = endpoint, keys, None

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int):
        if self.client is None:
            import boto3
            from botocore.config import Config

            self.client = boto3.client(
                "s3", endpoint_url=self.endpoint, region_name=pp.REGION,
                config=Config(s3={"addressing_style": "path"}),
            )
        data = self.client.get_object(Bucket=BUCKET, Key=self.keys[i])["Body"].read()
        return pp.touch(data)


def _as_list(batch):
    return batch if isinstance(batch, list) else [batch]


def cmd_loader(a) -> None:
    import warnings

    import torch
    from torch.utils.data import DataLoader

    warnings.filterwarnings("ignore", message="This DataLoader will create")
    with open(a.expected) as f:
        keys = list(json.load(f)[a.set])
    uris = [f"s3://{BUCKET}/{k}" for k in keys]
    step = a.step_ms / 1000
    collate = _as_list
    if a.mode.startswith("sluice"):
        import sluice
        from sluice.torch import SluiceIterableDataset

        ds = SluiceIterableDataset(
            uris, shuffle=True, seed=1, transform=pp.touch, client=sluice.Client(a.address),
            plan=a.mode == "sluice-plan", epochs=a.epochs,
        )
        make = lambda: DataLoader(ds, batch_size=BATCH[a.set], num_workers=2, collate_fn=collate)  # noqa: E731
    elif a.mode == "s3torchconnector":
        from s3torchconnector import S3MapDataset

        ds = S3MapDataset.from_objects(
            uris, region=pp.REGION, endpoint=a.endpoint, transform=pp._TouchReader(),
            s3client_config=pp.s3tc_config(),
        )
        make = lambda: DataLoader(ds, batch_size=BATCH[a.set], num_workers=2, shuffle=True, collate_fn=collate)  # noqa: E731
    else:
        ds = _Boto3Map(a.endpoint, keys)
        make = lambda: DataLoader(ds, batch_size=BATCH[a.set], num_workers=2, shuffle=True, collate_fn=collate)  # noqa: E731
    epochs = []
    for epoch in range(a.epochs):
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(epoch)
        before = scrape(a.metrics) if a.metrics else {}
        stall = first = 0.0
        objects = batches = 0
        t0 = time.perf_counter()
        it = iter(make())
        while True:
            waited = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            waited = time.perf_counter() - waited
            if batches == 0:
                first = waited
            stall += waited
            batches += 1
            objects += len(batch)
            time.sleep(step)
        seconds = time.perf_counter() - t0
        if objects != len(keys):
            raise AssertionError(f"{objects} samples in an epoch of {len(keys)}")
        row = {"epoch": epoch, "seconds": seconds, "stall": stall, "stall_after_first": stall - first,
               "batches": batches, "step_total": batches * step}
        if a.metrics:
            after = scrape(a.metrics)
            hits = after.get("sluice_cache_hits_total", 0) - before.get("sluice_cache_hits_total", 0)
            row["hit_ratio"] = hits / len(keys)
            row["backend_MiB"] = (backend_bytes(after) - backend_bytes(before)) / MiB
            row["prefetch_hits"] = after.get("sluice_prefetch_hits_total", 0) - before.get("sluice_prefetch_hits_total", 0)
        epochs.append(row)
        del it
    print("RESULT " + json.dumps({"epochs": epochs, "torch": torch.__version__}), flush=True)
    sys.stdout.flush()
    os._exit(0)


def run_loader(a, mode, set_name, endpoint, expected_path, step_ms, epochs=1, daemon=None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "loader", "--mode", mode, "--set", set_name,
           "--endpoint", endpoint, "--expected", expected_path, "--step-ms", str(step_ms),
           "--epochs", str(epochs)]
    if daemon:
        cmd += ["--address", daemon.address, "--metrics", f"http://127.0.0.1:{daemon.port}/metrics"]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=a.timeout)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"error": f"exit {p.returncode}: {tail}"}


def run_objects(a, lib, set_name, endpoint, expected_path, daemon=None) -> dict:
    """One cold pass of a set through python_peers' runner of `lib`."""
    ns = argparse.Namespace(
        endpoint=endpoint, concurrency=CONCURRENCY[set_name], workers=2, peer_passes=1,
        cached_passes=0, timeout=a.timeout,
    )
    return pp.run_worker(ns, lib, set_name, expected_path, daemon.address if daemon else None)


# --------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------


def cmd_run(a) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    expected = pp.local_expectations(a.files)
    expected_path = os.path.join(a.work, "plans.expected.json")
    with open(expected_path, "w") as f:
        json.dump(expected, f)
    small_bytes = sum(v[0] for v in expected["small"].values())
    half = f"{small_bytes // 2 // MiB}MiB"
    out: dict = {"origins": {}}
    for name, endpoint in a.origin:
        os.environ["SLUICE_STORAGE__S3__ENDPOINT"] = endpoint
        res: dict = {"endpoint": endpoint, "stall": {}, "epochs": {}, "cold": {}}
        # 1. stall per epoch
        for set_name in ("small", "large"):
            step = a.step_ms[set_name]
            for mode in LOADER_MODES:
                daemon = Daemon(a, "2GiB", {}) if mode.startswith("sluice") else None
                try:
                    r = run_loader(a, mode, set_name, endpoint, expected_path, step, 1, daemon)
                finally:
                    if daemon:
                        daemon.stop()
                res["stall"][f"{set_name}/{mode}"] = r
                print(f"[{name}] stall {set_name} {mode}: {summary_of(r)}", flush=True)
        # 2. three epochs of a dataset twice the cache
        for label, mode, policy in (("lru", "sluice-noplan", "lru"), ("plans", "sluice-plan", "plans")):
            daemon = Daemon(a, half, {"SLUICE_CACHE__POLICY": policy, "SLUICE_CACHE__MAX_OBJECT_SIZE": "1MiB",
                                      "SLUICE_WRITE__PART_SIZE": "5MiB", "SLUICE_ENGINE__PART_SIZE": "1MiB"})
            try:
                r = run_loader(a, mode, "small", endpoint, expected_path, 0, 3, daemon)
            finally:
                daemon.stop()
            res["epochs"][label] = r
            print(f"[{name}] 3 epochs, cache {half}, {label}: {summary_of(r)}", flush=True)
        # 3. cold reads vs obstore
        for set_name in ("small", "large"):
            daemon = Daemon(a, "2GiB", {})
            try:
                res["cold"][f"{set_name}/sluice"] = run_objects(a, "sluice", set_name, endpoint, expected_path, daemon)
            finally:
                daemon.stop()
            res["cold"][f"{set_name}/obstore"] = run_objects(a, "obstore", set_name, endpoint, expected_path)
            s = res["cold"][f"{set_name}/sluice"]
            o = res["cold"][f"{set_name}/obstore"]
            if "passes" in s and "passes" in o:
                ratio = s["passes"][0]["MBps"] / o["passes"][0]["MBps"]
                print(f"[{name}] cold {set_name}: sluice {s['passes'][0]['MBps']:.0f} MB/s, "
                      f"obstore {o['passes'][0]['MBps']:.0f} MB/s: {ratio:.2f}x", flush=True)
            else:
                print(f"[{name}] cold {set_name}: {s.get('error')} / {o.get('error')}", flush=True)
        out["origins"][name] = res
    with open(os.path.join(a.work, "plans.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(f"== written {os.path.join(a.work, 'plans.json')}")


def summary_of(r: dict) -> str:
    if "error" in r:
        return "ERROR " + r["error"]
    parts = []
    for e in r["epochs"]:
        s = f"epoch {e['epoch']}: {e['seconds']:.2f} s, stall {e['stall']:.2f} s ({e['stall_after_first']:.2f} after the first batch)"
        if "hit_ratio" in e:
            s += f", hits {100 * e['hit_ratio']:.0f}%, backend {e['backend_MiB']:.0f} MiB"
        parts.append(s)
    return "; ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("--origin", nargs=2, action="append", metavar=("NAME", "URL"), required=True)
    p.add_argument("--files", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--sluiced", required=True)
    p.add_argument("--step-small-ms", type=float, default=40.0, help="simulated step per batch of 32 x 128 KiB")
    p.add_argument("--step-large-ms", type=float, default=100.0, help="simulated step per 32 MiB object")
    p.add_argument("--timeout", type=float, default=900)
    p = sub.add_parser("loader")
    p.add_argument("--mode", choices=LOADER_MODES, required=True)
    p.add_argument("--set", required=True)
    p.add_argument("--endpoint", required=True)
    p.add_argument("--expected", required=True)
    p.add_argument("--step-ms", type=float, required=True)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--address")
    p.add_argument("--metrics")
    a = ap.parse_args()
    if a.cmd == "run":
        a.step_ms = {"small": a.step_small_ms, "large": a.step_large_ms}
        cmd_run(a)
    else:
        cmd_loader(a)


if __name__ == "__main__":
    main()
