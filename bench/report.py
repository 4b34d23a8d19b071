"""The markdown report of a peer benchmark run (``bench/run.py``): one table per scenario with
every peer's figures (medians over the repetitions; error counts summed) and gatehouse's ratio
to each, the issue's targets marked met or missed, the versions, the machine and the command."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Sequence

from bench.scenarios import Config, Metrics

__all__ = ["Results", "render"]

# scenario key ("A", "B1000", "C", ...) -> peer -> one Metrics per repetition
Results = dict[str, dict[str, list[Metrics]]]


def _num(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _ms(value: float) -> str:
    if value < 10:
        return f"{value:.2f} ms"
    if value < 100:
        return f"{value:.1f} ms"
    return f"{value:,.0f} ms"


def _seconds(value: float) -> str:
    if math.isinf(value):
        return "never"
    if value < 1:
        return f"{value * 1000:.1f} ms"
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def _mib(value: float) -> str:
    return f"{value:,.1f} MiB"


def _kib(value: float) -> str:
    return f"{value:,.1f} KiB"


@dataclasses.dataclass(frozen=True)
class Column:
    key: str
    label: str
    fmt: Callable[[float], str]
    ratio: bool = True
    agg: str = "median"  # median | sum | max
    floor: float = 0.0  # below this a figure is measurement noise: no ratio against it


_COLUMNS: dict[str, list[Column]] = {
    "A": [
        Column("rps", "req/s", _num),
        Column("p50_ms", "p50", _ms),
        Column("p99_ms", "p99", _ms),
        Column("errors", "non-2xx + socket errors", _num, ratio=False, agg="sum"),
    ],
    "B": [
        Column("completed", "completed", _num, ratio=False),
        Column("errors", "errors", _num, ratio=False, agg="sum"),
        Column("rss_per_stream_kib", "RSS per stream", _kib, floor=1.0),
        Column("rss_peak_mib", "RSS peak", _mib),
        Column("p50_ms", "relay p50", _ms),
        Column("p99_ms", "relay p99", _ms),
    ],
    "F": [
        Column("completed", "completed", _num, ratio=False),
        Column("errors", "errors", _num, ratio=False, agg="sum"),
        Column("p50_ms", "relay p50", _ms),
        Column("p99_ms", "relay p99", _ms),
        Column("cpu_pct", "CPU (% of a core)", lambda v: f"{v:.0f} %"),
    ],
    "C": [
        Column("rss_growth_mib", "RSS growth", _mib, floor=1.0),
        Column("received_kib", "read by the client", _kib, ratio=False),
    ],
    "D": [
        Column("close_s", "upstream socket closed after (median)", _seconds, floor=0.005),
        Column("close_max_s", "worst", _seconds, agg="max", floor=0.005),
    ],
    "E": [
        Column("mib_s", "MiB/s", lambda v: _num(v, 1)),
        Column("rss_growth_mib", "RSS growth", _mib, floor=1.0),
        Column("errors", "failed", _num, ratio=False, agg="sum"),
    ],
}


def _titles(cfg: Config) -> dict[str, str]:
    return {
        "A": f"A. JSON GET: `wrk -t1 -c{cfg.a_connections} -d{cfg.a_seconds}s --latency` (after a "
        f"{cfg.a_warmup_seconds} s warm-up), GET /json",
        "B": f"B. Concurrent SSE streams ({{count:,}} streams x {cfg.b_events} events at {cfg.b_interval:g} s, "
        f"opened {cfg.b_ramp:,}/s)",
        "C": f"C. Slow reader: {cfg.c_rate / 1000:g} KB/s for {cfg.c_seconds:g} s from a {cfg.c_size / 1e6:g} MB body",
        "D": f"D. Client disconnect mid-stream ({cfg.d_trials} trials per repetition, given up after "
        f"{cfg.d_timeout:g} s)",
        "E": f"E. Upload of {cfg.e_bytes / 1024**2:,.0f} MiB (application/octet-stream, Content-Length)",
        "F": f"F. Token-rate streams ({{count:,}} streams, an event every {cfg.f_interval * 1000:g} ms for "
        f"{cfg.f_seconds:g} s, opened at once)",
    }


def aggregate(runs: Sequence[Metrics], column: Column) -> float | None:
    values = [v for v in (run.get(column.key) for run in runs) if v is not None and not math.isnan(v)]
    if not values:
        return None
    if column.agg == "sum":
        return float(sum(values))
    if column.agg == "max":
        return float(max(values))
    return float(statistics.median(values))


def _ratio(mine: float | None, theirs: float | None, floor: float) -> str:
    if mine is None or theirs is None or theirs <= floor or theirs == 0 or math.isinf(theirs) or math.isinf(mine):
        return ""
    r = mine / theirs
    if r < 0.01:
        return " (<0.01x)"
    return f" ({r:.0f}x)" if r >= 100 else f" ({r:.2f}x)" if r < 10 else f" ({r:.1f}x)"


def _table(runs: dict[str, list[Metrics]], columns: list[Column], peers: Sequence[str]) -> list[str]:
    lines = [
        "| peer | " + " | ".join(c.label for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    gatehouse = {c.key: aggregate(runs.get("gatehouse", []), c) for c in columns}
    for peer in peers:
        if peer not in runs:
            continue
        cells = []
        for column in columns:
            value = aggregate(runs[peer], column)
            text = "n/a" if value is None else column.fmt(value)
            if value is not None and column.ratio and peer != "gatehouse":
                text += _ratio(gatehouse[column.key], value, column.floor)
            cells.append(text)
        lines.append(f"| {peer} | " + " | ".join(cells) + " |")
    return lines


def _median(results: Results, scenario: str, peer: str, key: str) -> float | None:
    column = next(c for group in _COLUMNS.values() for c in group if c.key == key)
    runs = results.get(scenario, {}).get(peer)
    return None if not runs else aggregate(runs, column)


PYTHON_NODE = ("nextjs", "fastapi")  # the peers "the best Python/Node peer" is chosen from
F_BOUND_MS = 100.0  # a token-rate stream's p99 that still reads as live


def targets(results: Results, peers: Sequence[str]) -> list[tuple[str, str, bool | None]]:
    """The issue's targets: (target, the figure, met / missed / None when not measured)."""
    out: list[tuple[str, str, bool | None]] = []

    def ratio_target(label: str, scenario: str, key: str, peer: str, bound: float, at_least: bool) -> None:
        mine, theirs = _median(results, scenario, "gatehouse", key), _median(results, scenario, peer, key)
        if mine is None or theirs is None or theirs == 0:
            out.append((label, "not measured", None))
            return
        r = mine / theirs
        out.append((label, f"{r:.2f}x", r >= bound if at_least else r <= bound))

    def best_peer_target(label: str, scenario: str, key: str, bound: float) -> None:
        """gatehouse's figure at most ``bound`` times the best (lowest) Python/Node peer's."""
        theirs = [v for v in (_median(results, scenario, p, key) for p in PYTHON_NODE) if v is not None]
        mine = _median(results, scenario, "gatehouse", key)
        if mine is None or not theirs:
            out.append((label, "not measured", None))
        else:
            best = min(theirs)
            out.append((label, f"{_ms(mine)} vs {_ms(best)} ({mine / best:.2f}x)", mine <= bound * best))

    def bound_target(label: str, scenario: str, key: str, bound: float, fmt: Callable[[float], str]) -> None:
        mine = _median(results, scenario, "gatehouse", key)
        out.append((label, "not measured", None) if mine is None else (label, fmt(mine), mine <= bound))

    for peer, bound in (("nextjs", 5.0), ("nginx", 0.15)):
        if peer in peers:
            ratio_target(f"A: req/s >= {bound:g}x {peer}", "A", "rps", peer, bound, True)
    best_peer_target("A: p99 <= 0.25x the best Python/Node peer's", "A", "p99_ms", 0.25)
    stream_keys = sorted((k for k in results if k.startswith("B")), key=lambda k: int(k[1:]))
    if stream_keys:
        top = stream_keys[-1]
        count = int(top[1:])
        runs = results[top].get("gatehouse", [])
        completed = [r.get("completed") for r in runs]
        errors = sum(r.get("errors") or 0 for r in runs)
        all_done = bool(runs) and all(c == count for c in completed) and errors == 0
        out.append(
            (
                f"B: all {count:,} streams complete, zero errors (every repetition)",
                f"completed {', '.join(_num(c or 0) for c in completed)}; errors {errors:g}",
                all_done if runs else None,
            )
        )
        nginx = _median(results, top, "nginx", "rss_per_stream_kib")
        mine = _median(results, top, "gatehouse", "rss_per_stream_kib")
        label = f"B: RSS per stream <= 16 KiB and below nginx's (at {count:,})"
        if mine is None:
            out.append((label, "not measured", None))
        else:
            below = nginx is None or mine < nginx
            out.append((label, f"{_kib(mine)} (nginx {_kib(nginx) if nginx else '-'})", mine <= 16 and below))
        peaks = [r.get("peak_open") for r in runs]
        p99 = _median(results, top, "gatehouse", "p99_ms")
        label = f"B: {count:,} streams all open at once, relay p99 <= 100 ms"
        if not runs or p99 is None:
            out.append((label, "not measured", None))
        else:
            at_once = all(p == count for p in peaks)
            figure = f"at most {', '.join(_num(p or 0) for p in peaks)} open; p99 {_ms(p99)}"
            out.append((label, figure, at_once and p99 <= 100))
    if "B5000" in results:
        best_peer_target("B: relay p99 at 5,000 streams <= 0.25x the best Python/Node peer's", "B5000", "p99_ms", 0.25)
    f_keys = sorted((k for k in results if k.startswith("F")), key=lambda k: int(k[1:]))
    for key in f_keys:
        best_peer_target(
            f"F: relay p99 at {int(key[1:]):,} streams <= 0.25x the best Python/Node peer's", key, "p99_ms", 0.25
        )
    if f_keys:

        def highest(peer: str) -> int:
            under = [int(k[1:]) for k in f_keys if (_median(results, k, peer, "p99_ms") or math.inf) < F_BOUND_MS]
            return max(under, default=0)

        mine = highest("gatehouse")
        theirs = max((highest(p) for p in PYTHON_NODE if any(p in results[k] for k in f_keys)), default=None)
        label = "F: highest C with p99 < 100 ms >= 4x the Python/Node peers'"
        if theirs is None:
            out.append((label, "not measured", None))
        else:
            figure = f"{mine:,} vs {theirs:,}" + (" (the highest C measured)" if mine == int(f_keys[-1][1:]) else "")
            out.append((label, figure, mine >= 4 * theirs and mine > 0))
    bound_target("C: RSS growth <= 2 MB", "C", "rss_growth_mib", 2e6 / 1024**2, _mib)
    bound_target("D: upstream socket closed <= 0.1 s", "D", "close_s", 0.1, _seconds)
    bound_target("E: RSS growth <= 32 MB", "E", "rss_growth_mib", 32e6 / 1024**2, _mib)
    ran = {key[0] for key in results}
    return [target for target in out if target[0][0] in ran]


def render(
    results: Results,
    cfg: Config,
    peers: Sequence[str],
    reps: str,
    header: list[str],
    failures: list[str],
) -> str:
    titles = _titles(cfg)
    lines = [*header, ""]
    lines.append(
        f"Medians over {reps} (error counts: summed; worst: max), peers "
        "alternating within each repetition, each peer started afresh for each measurement. "
        "`(r x)` after a peer's figure: gatehouse's figure divided by that peer's (for req/s and MiB/s "
        "higher is better for gatehouse, for latencies, RSS and seconds lower), left out where the peer's "
        "figure is within measurement noise (RSS growth or per stream under 1 MiB / 1 KiB, under 5 ms). RSS is "
        "the peer's whole process tree; `direct` (the client on the upstream itself) has none."
    )
    for key in results:
        kind = key[0]
        title = titles[kind].format(count=int(key[1:])) if kind in ("B", "F") else titles[kind]
        lines += ["", f"### {title}", ""]
        lines += _table(results[key], _COLUMNS[kind], peers)
    lines += ["", "### Targets (issue #12)", "", "| target | gatehouse | |", "|---|---|---|"]
    for label, figure, met in targets(results, peers):
        mark = "met" if met else "not measured" if met is None else "**missed**"
        lines.append(f"| {label} | {figure} | {mark} |")
    if failures:
        lines += ["", "### Failures", ""] + [f"- {f}" for f in failures]
    return "\n".join(lines) + "\n"
