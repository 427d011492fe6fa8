"""Where a stand-in listens when it is stopped and started again on the same ports (a service's outage in the tests,
the chaos run's crash of the farm): below the kernel's range of ephemeral ports. While it is down its ports are free,
and an outgoing connection of the machine (a pool reconnecting to PostgreSQL, a worker to RabbitMQ) may be given one
of them as its own; the restart then failed with "Address already in use"."""

from __future__ import annotations

import random

PORT_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
LINUX_EPHEMERAL_FLOOR = 32768  # the kernel's default, where its setting cannot be read
LOWEST_OFFSET = 10_000
OFFSET_STEP = 100


def ephemeral_floor() -> int:
    """The lowest port the kernel gives outgoing connections."""
    try:
        with open(PORT_RANGE_FILE, encoding="ascii") as settings:
            return int(settings.read().split()[0])
    except (OSError, ValueError, IndexError):
        return LINUX_EPHEMERAL_FLOOR


def restartable_offset(highest_port: int, rng: random.Random | None = None) -> int:
    """A random port offset that keeps every port up to `highest_port` below the ephemeral range (if the range
    leaves no room for it, anywhere up to 65,535)."""
    top = ephemeral_floor() - highest_port
    if top <= LOWEST_OFFSET:
        top = 65_536 - highest_port
    return (rng or random).randrange(LOWEST_OFFSET, top, OFFSET_STEP)
