"""The open files a process may hold, raised to what its calls in flight need.

Every call an executor has in flight holds a socket, and so does every client of the ingress;
Linux counts them against the process's soft limit on open files, 1,024 on many systems
(systemd's default for a service, most shells'), while the hard limit above it is the
administrator's. A generator allowed ``GENERATOR_MAX_IN_FLIGHT`` calls at once would fail its
calls past that limit with "Too many open files" (each a retry, never a result), so a process
raises its soft limit up to its hard one at start, as a process may without privileges, and
says once, as a WARNING, when even the hard limit is below what its settings ask.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

# what a process holds besides its calls in flight: Kafka's connections (one per broker, for
# each consumer and producer), its listening and log files, a console's, the table's store
SPARE = 256


def needed_by_executors(generator_max_in_flight: int, publisher_max_in_flight: int) -> int:
    """What a process running both executors may hold at once: a socket per call, and spare."""
    return generator_max_in_flight + publisher_max_in_flight + SPARE


def raise_limit(needed: int = 0, *, setting: str = "its settings") -> int:
    """Raise this process's soft limit on open files to its hard limit (never lower it); a
    WARNING naming ``setting`` when the hard limit is below ``needed``. The limit it has now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    if soft == infinite:
        return soft
    target = max(soft, needed) if hard == infinite else max(soft, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:  # a sandbox may refuse it: say so, go on
            log.warning("open files: the limit stays %d (not raised to %d): %s", soft, target, exc)
            target = soft
    if target < needed:
        log.warning(
            "open files: this process may hold %d (its hard limit; `ulimit -Hn`, systemd's "
            "LimitNOFILE=), and %s asks for about %d: calls past the limit fail with 'Too many "
            "open files' and are retried. Raise the limit or lower the setting",
            target,
            setting,
            needed,
        )
    return target
