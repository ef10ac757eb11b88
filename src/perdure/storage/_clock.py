"""Lease clocks of the single-host backends (SQLite, files): a clock that does not jump, tied to a boot.

A wall-clock step (NTP, `date -s`, a VM resumed from a snapshot) must neither make a live lease look
expired nor an expired one live. The SQLite and file storages serve the processes of one machine, so
they compare lease expiry on `CLOCK_BOOTTIME` (seconds since boot, counting suspend, never stepped) and
store the kernel's boot id with the lease: a lease written in another boot is expired, because the
machine restarted and its holder is gone. The wall-clock expiry is stored too, for display
(`lease_expires_at`) and for leases written without a boot id (older versions, platforms without
`/proc/sys/kernel/random/boot_id`), which are compared on the wall clock as before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["BOOT_ID", "LeaseTime", "is_live", "lease_now", "lease_until", "monotonic"]

_BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
_CLOCK = getattr(time, "CLOCK_BOOTTIME", None)


def _read_boot_id() -> str | None:
    try:
        with open(_BOOT_ID_PATH) as fh:
            return fh.read().strip() or None
    except OSError:
        return None


BOOT_ID: str | None = _read_boot_id()
"""This boot's id (None where the platform has none: leases then use the wall clock)."""


def monotonic() -> float:
    """Seconds on a system-wide clock that never jumps (`CLOCK_BOOTTIME` where available)."""
    return time.clock_gettime(_CLOCK) if _CLOCK is not None else time.monotonic()


@dataclass(frozen=True)
class LeaseTime:
    """One instant on both clocks: `wall` (epoch seconds, for display) and `mono` in boot `boot`."""

    wall: float
    mono: float
    boot: str | None


def lease_now() -> LeaseTime:
    """Now, on both clocks."""
    return LeaseTime(time.time(), monotonic(), BOOT_ID)


def lease_until(ttl: float) -> LeaseTime:
    """The expiry of a lease taken now for `ttl` seconds."""
    now = lease_now()
    return LeaseTime(now.wall + ttl, now.mono + ttl, now.boot)


def is_live(wall: float | None, mono: float | None, boot: str | None, now: LeaseTime) -> bool:
    """Whether a stored lease expiry is still ahead of `now`.

    Compared on the monotonic clock when the lease was written in this boot; a lease of another
    boot is expired; a lease without a boot id (or read where there is none) uses the wall clock.
    """
    if boot is not None and mono is not None and now.boot is not None:
        return boot == now.boot and mono > now.mono
    return wall is not None and wall > now.wall
