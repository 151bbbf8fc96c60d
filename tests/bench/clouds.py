#!/usr/bin/env python3
"""Cloud emulator benchmark: sluice on gs:// and az:// against each cloud's
own Python SDK (google-cloud-storage, azure-storage-blob), on
fake-gcs-server and Azurite, in one run.

Run through tests/bench/clouds.sh, which starts the emulators, generates the
data and builds what is needed. Modes:

  clouds.py prepare --gcs URL --azurite URL --files DIR
      create bucket/container `bench` on each and upload every file of
      DIR/large and DIR/small with the SDKs.
  clouds.py run --gcs URL --azurite URL --files DIR --work DIR --sluiced BIN
      for each emulator and set: the SDK (a pass, then a second one), then
      sluice on a fresh daemon (a cold pass, then a cached one); a table on
      stdout, the same as JSON in WORK/clouds.json.

Every pass reads every object once, touches one byte per 4 KiB and checks
size and content against the local copy (python_peers.py's helpers).
Emulators are not clouds: read the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from python_peers import SETS, local_expectations, timed_pass, touch  # noqa: E402

BUCKET = "bench"
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def gcs_client(url: str):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project="bench", credentials=AnonymousCredentials(), client_options={"api_endpoint": url}
    )


def azure_service(url: str):
    from azure.storage.blob import BlobServiceClient

    conn = (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
        f"BlobEndpoint={url}/{ACCOUNT};"
    )
    return BlobServiceClient.from_connection_string(conn)


def keys_of(files: str, set_name: str) -> list[str]:
    names = sorted(os.listdir(os.path.join(files, set_name)), key=lambda n: (len(n), n))
    return [f"{set_name}/{n}" for n in names]


def cmd_prepare(a) -> None:
    gcs = gcs_client(a.gcs)
    try:
        bucket = gcs.create_bucket(BUCKET)
    except Exception:  # exists
        bucket = gcs.bucket(BUCKET)
    svc = azure_service(a.azurite)
    container = svc.get_container_client(BUCKET)
    if not container.exists():
        container.create_container()
    have_gcs = {b.name: b.size for b in gcs.list_blobs(BUCKET)}
    have_az = {b.name: b.size for b in container.list_blobs()}
    todo = []
    for set_name in SETS:
        for key in keys_of(a.files, set_name):
            path = os.path.join(a.files, key)
            size = os.path.getsize(path)
            todo.append((key, path, size))

    def upload(item):
        key, path, size = item
        if have_gcs.get(key) != size:
            bucket.blob(key).upload_from_filename(path)
        if have_az.get(key) != size:
            with open(path, "rb") as f:
                container.upload_blob(key, f, overwrite=True, max_concurrency=4)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(upload, todo))
    print(f"uploaded {len(todo)} objects to each emulator (missing ones only)")


def sdk_body(kind: str, url: str, set_name: str, concurrency: int):
    """A pass body reading with the SDK the way its docs suggest: one shared
    client in a thread pool; large Azure blobs with max_concurrency."""
    if kind == "gcs":
        bucket = gcs_client(url).bucket(BUCKET)

        def one(key):
            return key, touch(bucket.blob(key).download_as_bytes())

        method = f"google-cloud-storage Blob.download_as_bytes x {concurrency} threads"
    else:
        container = azure_service(url).get_container_client(BUCKET)
        per_blob = 4 if set_name == "large" else 1
        threads = max(1, concurrency // per_blob)

        def one(key):
            data = container.get_blob_client(key).download_blob(max_concurrency=per_blob).readall()
            return key, touch(data)

        method = f"azure-storage-blob download_blob(max_concurrency={per_blob}).readall x {threads} threads"
        concurrency = threads

    def body(keys, checker):
        with ThreadPoolExecutor(concurrency) as pool:
            for key, (size, ssum) in pool.map(one, keys):
                checker.add(key, size, ssum)

    return method, body


class Daemon:
    def __init__(self, a, env: dict[str, str], work: str):
        self.socket = os.path.join(work, "clouds.sock")
        if os.path.exists(self.socket):
            os.unlink(self.socket)
        full = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
        full.update(env)
        self.log = open(os.path.join(work, "clouds.sluiced.log"), "ab")
        self.proc = subprocess.Popen(
            [a.sluiced, "--socket", self.socket, "--memory-budget", a.budget, "--log-level", "warn"],
            env=full, stdout=subprocess.DEVNULL, stderr=self.log,
        )
        deadline = time.monotonic() + 30
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("sluiced did not start; see clouds.sluiced.log")
            time.sleep(0.02)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def sluice_passes(a, scheme_base: str, keys, expected, env) -> tuple[str, list]:
    import sluice

    d = Daemon(a, env, a.work)
    try:
        client = sluice.Client(f"unix://{d.socket}")
        uris = [f"{scheme_base}{k}" for k in keys]

        def body(keys, checker):
            for idx, buf in client.get_many(uris, ordered=False, window=a.concurrency):
                with buf:
                    checker.add(keys[idx], *touch(buf))

        passes = [timed_pass("cold", keys, expected, body), timed_pass("cached", keys, expected, body)]
    finally:
        d.stop()
    return f"Client.get_many(ordered=False, window={a.concurrency})", passes


def cmd_run(a) -> None:
    expected_all = local_expectations(a.files)
    env = {
        "SLUICE_STORAGE__GCS__ENDPOINT": a.gcs,
        "SLUICE_STORAGE__GCS__ANONYMOUS": "true",
        "SLUICE_STORAGE__AZURE__ACCOUNTS": (
            f'[{{name="{ACCOUNT}", endpoint="{a.azurite}/{ACCOUNT}", account_key="{KEY}"}}]'
        ),
    }
    results = []
    for kind, url, base in (
        ("gcs", a.gcs, f"gs://{BUCKET}/"),
        ("azure", a.azurite, f"az://{ACCOUNT}/{BUCKET}/"),
    ):
        for set_name in SETS:
            keys = keys_of(a.files, set_name)
            expected = expected_all[set_name]
            method, body = sdk_body(kind, url, set_name, a.concurrency)
            sdk = [timed_pass("pass 1", keys, expected, body), timed_pass("pass 2", keys, expected, body)]
            results.append({"emulator": kind, "set": set_name, "lib": "sdk", "method": method, "passes": sdk})
            method, passes = sluice_passes(a, base, keys, expected, env)
            results.append({"emulator": kind, "set": set_name, "lib": "sluice", "method": method, "passes": passes})
            s_cold, s_cached = passes[0]["MBps"], passes[1]["MBps"]
            k1, k2 = sdk[0]["MBps"], sdk[1]["MBps"]
            print(
                f"{kind:6} {set_name:6} sdk {k1:8.1f} / {k2:8.1f} MB/s   sluice cold {s_cold:8.1f} "
                f"({s_cold / k1:5.2f}x)  cached {s_cached:8.1f} ({s_cached / k2:6.2f}x)",
                flush=True,
            )
    out = {
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()},
        "concurrency": a.concurrency,
        "results": results,
    }
    with open(os.path.join(a.work, "clouds.json"), "w") as f:
        json.dump(out, f, indent=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--gcs", required=True)
    p.add_argument("--azurite", required=True)
    p.add_argument("--files", required=True)
    p = sub.add_parser("run")
    p.add_argument("--gcs", required=True)
    p.add_argument("--azurite", required=True)
    p.add_argument("--files", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--sluiced", required=True)
    p.add_argument("--budget", default="3GiB")
    p.add_argument("--concurrency", type=int, default=32)
    a = ap.parse_args()
    {"prepare": cmd_prepare, "run": cmd_run}[a.cmd](a)


if __name__ == "__main__":
    main()
