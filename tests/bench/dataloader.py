"""A PyTorch DataLoader over cached samples: sluice against local files.

The same DataLoader (worker processes, batch size, a transform that reads
one byte of every 4 KiB page of each sample) over the same objects, two
ways: `SluiceMapDataset` over `file://` URIs whose bytes the daemon has
cached (a warm-up epoch first), and a map-style dataset that does
`open().read()` per sample from files in the page cache. Epochs alternate
between the two; the best epoch of each is reported, with the CPU seconds
of the daemon and of this process tree (main + workers) per sample.

With `--persistent-workers` each dataset keeps one DataLoader whose
worker processes live across epochs (`persistent_workers=True`); their CPU
is then read from /proc while they run, since they are never reaped.

    python dataloader.py --root DIR --socket SOCK --daemon-pid PID \
        [--repeat 5] [--epochs 3] [--workers 2] [--batch-size 32] [--persistent-workers]
"""

import argparse
import json
import os
import sys
import time

import torch
from torch.utils.data import DataLoader, Dataset

import sluice.torch as st

PAGE = 4096


def touch(obj):
    with memoryview(obj) as mv:
        with mv.cast("B") as flat:
            return flat.nbytes, sum(flat[::PAGE])


class LocalFiles(Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with open(self.paths[i], "rb") as f:
            return touch(f.read())


def cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """This process and its reaped children (DataLoader workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


# Persistent loaders by dataset, and the CPU seen so far of their workers.
LOADERS = {}
WORKER_CPU = {}


def live_workers_cpu(loader) -> float:
    """CPU added since the last call by the live workers of a persistent
    loader (private attribute of torch's iterator; 0 before it exists)."""
    added = 0.0
    for w in getattr(getattr(loader, "_iterator", None), "_workers", []):
        now = cpu_of(w.pid)
        added += now - WORKER_CPU.get(w.pid, 0.0)
        WORKER_CPU[w.pid] = now
    return added


def epoch(ds, a, daemon_pid):
    if a.persistent_workers:
        loader = LOADERS.get(id(ds))
        if loader is None:
            loader = DataLoader(
                ds, batch_size=a.batch_size, num_workers=a.workers, collate_fn=list, persistent_workers=True
            )
            LOADERS[id(ds)] = loader
        live_workers_cpu(loader)
    else:
        loader = DataLoader(ds, batch_size=a.batch_size, num_workers=a.workers, collate_fn=list)
    c0, d0, t0 = own_cpu(), cpu_of(daemon_pid), time.perf_counter()
    n, total = 0, 0
    for batch in loader:
        n += len(batch)
        total += sum(size for size, _ in batch)
    wall = time.perf_counter() - t0
    client = own_cpu() - c0
    if a.persistent_workers:
        client += live_workers_cpu(loader)
    return {
        "samples_per_s": n / wall,
        "client_us_per_sample": client / n * 1e6,
        "daemon_us_per_sample": (cpu_of(daemon_pid) - d0) / n * 1e6,
        "bytes": total,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--socket", required=True)
    p.add_argument("--daemon-pid", type=int, required=True)
    p.add_argument("--repeat", type=int, default=5, help="passes over the files per epoch")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--persistent-workers", action="store_true", help="workers live across epochs")
    a = p.parse_args()
    os.environ["SLUICE_ADDRESS"] = f"unix://{a.socket}"
    names = sorted(os.listdir(a.root), key=lambda n: (len(n), n))
    paths = [os.path.join(a.root, n) for n in names] * a.repeat
    for path in paths[: len(names)]:
        with open(path, "rb") as f:
            f.read()  # into the page cache
    files = LocalFiles(paths)
    sl = st.SluiceMapDataset([f"file://{p}" for p in paths], transform=touch)
    warm = epoch(sl, a, a.daemon_pid)
    results = {"sluice warm-up": warm, "files": [], "sluice": []}
    for _ in range(a.epochs):
        results["files"].append(epoch(files, a, a.daemon_pid))
        results["sluice"].append(epoch(sl, a, a.daemon_pid))
    if any(r["bytes"] != results["files"][0]["bytes"] for r in results["sluice"] + results["files"]):
        sys.exit("the two datasets read different bytes")
    best = {k: max(results[k], key=lambda r: r["samples_per_s"]) for k in ("files", "sluice")}
    n = len(paths)
    workers = f"{a.workers} {'persistent ' if a.persistent_workers else ''}workers"
    print(f"{n} samples of {len(names)} objects, {workers}, batch {a.batch_size}, best of {a.epochs} epochs")
    for k in ("files", "sluice"):
        r = best[k]
        print(
            f"  {k:7s} {r['samples_per_s']:9.0f} samples/s  client {r['client_us_per_sample']:6.1f} us/sample"
            + (f"  daemon {r['daemon_us_per_sample']:5.1f} us/sample" if k == "sluice" else "")
        )
    print(f"  sluice / files: {best['sluice']['samples_per_s'] / best['files']['samples_per_s']:.2f}x")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
