"""Prometheus text exposition (format version 0.0.4): counter/gauge/histogram primitives, a
registry that renders them, and the value/label formatting helpers. Generic: it knows nothing of
the server's metric names (those are ``radixlm.server.metrics``).

Standard library only (no ``prometheus_client``, no torch), so the server process imports it
cheaply.

Invariants:

- A *family* (``Counter``, ``Gauge``, ``Histogram``) has a fixed name, help text and label
  names; each distinct tuple of label values is one *child* (one series). A family without
  labels has exactly one child, created up front, so it renders ``0`` before any update.
- Every family has one ``threading.Lock`` shared by its children: an update and a render never
  interleave, so a rendered histogram's ``_count`` always equals its ``+Inf`` bucket.
- A counter never decreases: ``inc`` rejects negative amounts and ``set_total`` ignores a value
  below the current total. Counter names end in ``_total``.
- Histogram buckets are finite, strictly increasing upper bounds; ``+Inf`` is always the last.
  Buckets are stored per interval and rendered cumulatively (``le`` means "value <= bound").
- A ``MetricsRegistry`` renders its families in registration order; no two families may expose
  the same sample name (a histogram ``x`` also owns ``x_bucket``, ``x_sum`` and ``x_count``).
"""

from __future__ import annotations

import bisect
import math
import re
import threading
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_METRIC_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def format_value(value: float) -> str:
    """A sample value as Prometheus parses it: ``+Inf``/``-Inf``/``NaN``; integral values
    without a fractional part or exponent (``3``, not ``3.0``); else the shortest round-trip."""
    if isinstance(value, int):
        return str(int(value))  # int() turns a bool into 0/1
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    # NOTE: below 1e15 every integral float is exact, so int() adds no noise; larger values keep
    # repr's exponent form ("1e+20"), which Prometheus' float parser accepts.
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def escape_label_value(value: str) -> str:
    """Escape backslash, double quote and newline, as the text format requires in label values."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    # NOTE: HELP text escapes only backslash and newline (quotes are literal there).
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class _Child:
    """One series of a family; ``_lock`` is the family's lock, ``label_str`` the rendered
    ``name="value",...`` pairs (without braces)."""

    def __init__(self, lock: threading.Lock, label_str: str) -> None:
        self._lock = lock
        self.label_str = label_str


class CounterChild(_Child):
    def __init__(self, lock: threading.Lock, label_str: str) -> None:
        super().__init__(lock, label_str)
        self._value: float = 0

    def inc(self, amount: float = 1) -> None:
        """Add ``amount`` (must be >= 0; NaN is rejected too)."""
        if not amount >= 0:
            raise ValueError(f"counter increment must be >= 0, got {amount!r}")
        with self._lock:
            self._value += amount

    def set_total(self, value: float) -> None:
        """Mirror a cumulative count kept elsewhere (e.g. the scheduler process). A value below the
        current total (or NaN) is ignored, so the counter never goes backwards."""
        with self._lock:
            if value > self._value:
                self._value = value

    def get(self) -> float:
        with self._lock:
            return self._value


class GaugeChild(_Child):
    def __init__(self, lock: threading.Lock, label_str: str) -> None:
        super().__init__(lock, label_str)
        self._value: float = 0

    def set(self, value: float) -> None:
        with self._lock:
            self._value = value

    def inc(self, amount: float = 1) -> None:
        with self._lock:
            self._value += amount

    def dec(self, amount: float = 1) -> None:
        with self._lock:
            self._value -= amount

    def get(self) -> float:
        with self._lock:
            return self._value


class HistogramChild(_Child):
    def __init__(self, lock: threading.Lock, label_str: str, bounds: tuple[float, ...]) -> None:
        super().__init__(lock, label_str)
        self._bounds = bounds  # ends with +Inf
        self._counts = [0] * len(bounds)  # per interval (bounds[i-1], bounds[i]], not cumulative
        self._sum: float = 0.0

    def observe(self, value: float, count: int = 1) -> None:
        """Record ``value`` ``count`` times (one lock acquisition however large ``count`` is)."""
        if math.isnan(value):
            raise ValueError("cannot observe NaN")
        if count < 0:
            raise ValueError(f"observation count must be >= 0, got {count}")
        # bisect_left finds the first bound >= value, i.e. the smallest bucket with value <= le.
        i = bisect.bisect_left(self._bounds, value)
        with self._lock:
            self._counts[i] += count
            self._sum += value * count

    def snapshot(self) -> tuple[list[int], float]:
        """(cumulative bucket counts, sum); the last cumulative count is the total count."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, running = [], 0
        for c in counts:
            running += c
            cumulative.append(running)
        return cumulative, total


C = TypeVar("C", bound=_Child)


class _Family(Generic[C]):
    """Name, help, label names and the children keyed by label values."""

    kind = ""  # the ``# TYPE`` word

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        if not _METRIC_NAME_RE.match(name):
            raise ValueError(f"invalid metric name {name!r}: must match {_METRIC_NAME_RE.pattern}")
        for label in labelnames:
            if not _LABEL_NAME_RE.match(label) or label.startswith("__"):
                raise ValueError(
                    f"invalid label name {label!r} in {name}: must match "
                    f"{_LABEL_NAME_RE.pattern} and not start with '__'"
                )
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"duplicate label names in {name}: {list(labelnames)}")
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()
        self._children: dict[tuple[str, ...], C] = {}
        if not self.labelnames:
            self._children[()] = self._new_child("")

    def _new_child(self, label_str: str) -> C:
        raise NotImplementedError

    def sample_names(self) -> tuple[str, ...]:
        """Every sample name this family renders (used by the registry to detect clashes)."""
        return (self.name,)

    def labels(self, **values: object) -> C:
        """The child for these label values (created on first use; values are ``str()``-ed).
        The keys must be exactly the family's label names."""
        if set(values) != set(self.labelnames):
            raise ValueError(
                f"{self.name} takes labels {list(self.labelnames)}, got {sorted(values)}"
            )
        key = tuple(str(values[n]) for n in self.labelnames)
        with self._lock:
            child = self._children.get(key)
            if child is None:
                label_str = ",".join(
                    f'{n}="{escape_label_value(v)}"' for n, v in zip(self.labelnames, key)
                )
                child = self._children[key] = self._new_child(label_str)
        return child

    def _default(self) -> C:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {list(self.labelnames)}; use .labels(...)")
        return self._children[()]

    def _child_list(self) -> list[C]:
        with self._lock:
            return list(self._children.values())

    def _sample_lines(self) -> Iterable[str]:
        raise NotImplementedError

    def render(self) -> str:
        """``# HELP``, ``# TYPE`` and one line per sample, each ending in a newline."""
        lines = [
            f"# HELP {self.name} {_escape_help(self.documentation)}",
            f"# TYPE {self.name} {self.kind}",
            *self._sample_lines(),
        ]
        return "".join(line + "\n" for line in lines)


def _sample(name: str, label_str: str, value: float) -> str:
    labels = "{" + label_str + "}" if label_str else ""
    return f"{name}{labels} {format_value(value)}"


class Counter(_Family[CounterChild]):
    """A monotonically increasing count; the name must end in ``_total``."""

    kind = "counter"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        # NOTE: the family name carries the suffix (as in HELP/TYPE of prometheus_client's 0.0.4
        # output), so the family name and its only sample name are the same string.
        if not name.endswith("_total"):
            raise ValueError(f"counter name {name!r} must end in '_total'")
        super().__init__(name, documentation, labelnames)

    def _new_child(self, label_str: str) -> CounterChild:
        return CounterChild(self._lock, label_str)

    def inc(self, amount: float = 1) -> None:
        self._default().inc(amount)

    def set_total(self, value: float) -> None:
        self._default().set_total(value)

    def get(self) -> float:
        return self._default().get()

    def _sample_lines(self) -> Iterable[str]:
        for child in self._child_list():
            yield _sample(self.name, child.label_str, child.get())


class Gauge(_Family[GaugeChild]):
    """A value that can go up and down."""

    kind = "gauge"

    def _new_child(self, label_str: str) -> GaugeChild:
        return GaugeChild(self._lock, label_str)

    def set(self, value: float) -> None:
        self._default().set(value)

    def inc(self, amount: float = 1) -> None:
        self._default().inc(amount)

    def dec(self, amount: float = 1) -> None:
        self._default().dec(amount)

    def get(self) -> float:
        return self._default().get()

    def _sample_lines(self) -> Iterable[str]:
        for child in self._child_list():
            yield _sample(self.name, child.label_str, child.get())


class Histogram(_Family[HistogramChild]):
    """Observations counted into fixed buckets; renders cumulative ``_bucket{le=...}``, then
    ``_sum`` and ``_count`` per series."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        labelnames: Sequence[str] = (),
    ) -> None:
        bounds = [float(b) for b in buckets]
        if bounds and bounds[-1] == math.inf:
            bounds.pop()
        if any(not math.isfinite(b) for b in bounds):
            raise ValueError(f"{name}: bucket bounds must be finite (+Inf is added), got {buckets}")
        if any(a >= b for a, b in zip(bounds, bounds[1:])):
            raise ValueError(f"{name}: bucket bounds must be strictly increasing, got {buckets}")
        if "le" in labelnames:
            raise ValueError(f"{name}: 'le' is reserved for histogram buckets")
        self.bounds = (*bounds, math.inf)
        super().__init__(name, documentation, labelnames)

    def _new_child(self, label_str: str) -> HistogramChild:
        return HistogramChild(self._lock, label_str, self.bounds)

    def sample_names(self) -> tuple[str, ...]:
        return (self.name, f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")

    def observe(self, value: float, count: int = 1) -> None:
        self._default().observe(value, count)

    def _sample_lines(self) -> Iterable[str]:
        for child in self._child_list():
            cumulative, total = child.snapshot()
            prefix = child.label_str + "," if child.label_str else ""
            for bound, n in zip(self.bounds, cumulative):
                le = f'{prefix}le="{format_value(bound)}"'
                yield _sample(f"{self.name}_bucket", le, n)
            yield _sample(f"{self.name}_sum", child.label_str, total)
            yield _sample(f"{self.name}_count", child.label_str, cumulative[-1])


F = TypeVar("F", bound=_Family)


class MetricsRegistry:
    """Owns metric families and renders them, in registration order, as one text exposition."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: list[_Family] = []
        self._sample_names: set[str] = set()

    def register(self, family: F) -> F:
        """Add ``family``; a name clash with an already registered family is a ``ValueError``."""
        names = family.sample_names()
        with self._lock:
            clash = self._sample_names.intersection(names)
            if clash:
                raise ValueError(f"metric {family.name!r} clashes with registered {sorted(clash)}")
            self._sample_names.update(names)
            self._families.append(family)
        return family

    def counter(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Counter:
        return self.register(Counter(name, documentation, labelnames))

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Gauge:
        return self.register(Gauge(name, documentation, labelnames))

    def histogram(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        labelnames: Sequence[str] = (),
    ) -> Histogram:
        return self.register(Histogram(name, documentation, buckets, labelnames))

    def render(self) -> str:
        with self._lock:
            families = list(self._families)
        return "".join(f.render() for f in families)
