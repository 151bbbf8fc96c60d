"""deploy/systemd/sluiced.service, checked by systemd's own tools.

`systemd-analyze verify` parses the unit as systemd would load it and
reports unknown keys, bad values and a missing executable; ExecStart= points
at the built daemon in a temporary copy of the unit. `User=sluice` stays as
it is: verify does not resolve users (that happens when the service starts),
so the unit verifies on machines without that user, and nothing is created.
`systemd-analyze security --offline=true` rates the unit's hardening from
the file alone, without a running systemd.
"""

import pathlib
import re
import subprocess

import pytest

from conftest import REPO

UNIT = REPO / "deploy" / "systemd" / "sluiced.service"

# Highest overall exposure accepted ("OK" ends at 4.9 on systemd's scale of
# 0 to 10). The unit rates 1.4 (docs/OPERATIONS.md).
MAX_EXPOSURE = 3.0

# server.grace_period's default, plus the 5 s that aborts of cancelled
# writes may take after it (docs/OPERATIONS.md, "Signals and graceful
# shutdown").
DRAIN_SECONDS = 20 + 5


def directives(text: str) -> list[tuple[str, str]]:
    """(key, value) of every assignment, in order, sections ignored."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.append((key.strip(), value.strip()))
    return out


def values(key: str) -> list[str]:
    return [v for k, v in directives(UNIT.read_text()) if k == key]


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, f"not a simple time span: {value}"
    return int(match[1]) * (60 if match[2] == "min" else 1)


@pytest.fixture
def unit_copy(tmp_path: pathlib.Path, sluiced: pathlib.Path) -> pathlib.Path:
    text = UNIT.read_text()
    exec_start = "ExecStart=/usr/local/bin/sluiced "
    assert exec_start in text
    copy = tmp_path / "sluiced.service"
    copy.write_text(text.replace(exec_start, f"ExecStart={sluiced} "))
    return copy


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def test_verify_finds_nothing_wrong(systemd_analyze: str, unit_copy: pathlib.Path) -> None:
    r = run(systemd_analyze, "verify", "--man=no", str(unit_copy))
    # Unknown keys and values that do not parse are only warnings on stderr
    # (exit status 0): any line about this unit fails the test.
    about_unit = [
        line for line in r.stderr.splitlines() if str(unit_copy) in line or "sluiced" in line
    ]
    assert r.returncode == 0 and not about_unit, r.stderr


def test_exposure_score_is_low(systemd_analyze: str, unit_copy: pathlib.Path) -> None:
    r = run(systemd_analyze, "security", "--offline=true", "--no-pager", str(unit_copy))
    assert r.returncode == 0, r.stderr
    match = re.search(r"Overall exposure level for sluiced\.service: (\d+\.\d+)", r.stdout)
    assert match, r.stdout
    score = float(match[1])
    assert score <= MAX_EXPOSURE, f"exposure {score} > {MAX_EXPOSURE}:\n{r.stdout}"


def syscall_groups(systemd_analyze: str) -> dict[str, list[str]]:
    """Every @group of this systemd, with its members (calls and @groups)."""
    r = run(systemd_analyze, "syscall-filter", "--no-pager")
    assert r.returncode == 0, r.stderr
    groups: dict[str, list[str]] = {}
    current = None
    for line in r.stdout.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
        elif not line.strip():
            current = None
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for name in names:
        if name.startswith("@"):
            out |= expand(groups[name], groups)
        else:
            out.add(name)
    return out


def test_system_call_filter_allows_what_the_daemon_calls(systemd_analyze: str) -> None:
    groups = syscall_groups(systemd_analyze)
    allowed: set[str] = set()
    denied: set[str] = set()
    for value in values("SystemCallFilter"):
        if value.startswith("~"):
            denied |= expand(value[1:].split(), groups)
        else:
            allowed |= expand(value.split(), groups)
    needed = {
        # direct:// and the disk tier
        "io_uring_setup",
        "io_uring_enter",
        # the shared-memory arena and its descriptor socket
        "memfd_create",
        "fcntl",
        "mmap",
        "madvise",
        "sendmsg",
        # the prefault thread's idle priority
        "sched_setscheduler",
        "setpriority",
        # the async runtime
        "epoll_wait",
        "eventfd2",
        "futex",
    }
    assert needed <= allowed - denied, sorted(needed - (allowed - denied))


def test_notify_watchdog_and_stop_timeout() -> None:
    assert values("Type") == ["notify"]
    assert values("NotifyAccess") == ["main"]
    (watchdog,) = values("WatchdogSec")
    assert seconds(watchdog) > 0
    (stop,) = values("TimeoutStopSec")
    assert seconds(stop) > DRAIN_SECONDS
    # Peer uids must stay real: no user namespace (see the unit's comment).
    assert values("PrivateUsers") in ([], ["no"])
