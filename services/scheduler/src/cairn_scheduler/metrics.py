"""The scheduler's Prometheus metrics (served on its health port at /metrics)."""

from prometheus_client import Counter, Gauge, Histogram

TIMERS_PENDING = Gauge(
    "cairn_scheduler_timers_pending", "Timers waiting in PostgreSQL (refreshed periodically)"
)
TIMERS_HELD = Gauge(
    "cairn_scheduler_timers_held", "Timers this replica has claimed and holds in memory"
)
TIMERS_FIRED = Counter("cairn_scheduler_timers_fired_total", "Timers fired into their partition")
TIMERS_CANCELLED_BEFORE_FIRE = Counter(
    "cairn_scheduler_timers_cancelled_before_fire_total",
    "Claimed timers the matcher cancelled before they came due (not fired)",
)
FIRE_LATENESS = Histogram(
    "cairn_scheduler_fire_lateness_seconds",
    "How long after its due time a timer was published",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
