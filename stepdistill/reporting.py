"""Tables and plots of evaluation results (markdown for READMEs, PNG plots of a metric vs steps)."""

from __future__ import annotations

from collections import defaultdict

METRICS = {
    "fd_domain": "FD (domain)",
    "fid": "FID",
    "fd_clip": "FD (CLIP)",
    "accuracy": "class accuracy",
    "clip_score": "CLIP score",
}


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, int) else f"{value:.3f}"


def results_table(result: dict) -> str:
    """A markdown table of ``result["results"]`` (one column per metric present), real-data floor first. Rows of
    the same model, steps and guidance drawn at several seeds become one: each metric's mean, then ``(min-max)``
    over the seeds, and the seed count beside N."""
    rows = merge_seeds(list(result["results"]))
    floor = result.get("real_floor")
    if floor:
        rows.insert(0, {"model": "real data (floor)", "steps": None, "guidance": None, **floor})
    metrics = [m for m in METRICS if any(m in row for row in rows)]
    lines = [
        "| model | steps | guidance | " + " | ".join(METRICS[m] for m in metrics) + " | N |",
        "|---|---:|---:|" + "---:|" * (len(metrics) + 1),
    ]
    for row in rows:
        cells = [row["model"], _fmt(row.get("steps")), "-" if row.get("guidance") is None else f"{row['guidance']:g}"]
        spread = row.get("spread", {})
        cells += [
            _fmt(row.get(m)) + (f" ({spread[m][0]:.3f}-{spread[m][1]:.3f})" if m in spread else "") for m in metrics
        ]
        cells.append(str(row["n"]) + (f" x {row['seeds']} seeds" if row.get("seeds", 1) > 1 else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def merge_seeds(rows: list[dict]) -> list[dict]:
    """Rows of one (model, steps, guidance) at several seeds as one row: metric means, ``spread`` (min, max) per
    metric and ``seeds``; single rows unchanged. Order: first appearance."""
    groups: dict = {}
    for row in rows:
        groups.setdefault((row["model"], row.get("steps"), row.get("guidance")), []).append(row)
    merged = []
    for group in groups.values():
        if len(group) == 1:
            merged.append(group[0])
            continue
        row = {**group[0], "seeds": len(group), "spread": {}}
        for metric in (m for m in METRICS if m in group[0]):
            values = [r[metric] for r in group]
            row[metric] = sum(values) / len(values)
            row["spread"][metric] = (min(values), max(values))
        merged.append(row)
    return merged


def plot_metric_vs_steps(rows: list[dict], metric: str, path: str, floor: float | None = None) -> None:
    """One line per (model, guidance): ``metric`` against sampling steps on a log axis."""
    plt = _pyplot()
    lines = defaultdict(list)
    for row in rows:
        lines[f"{row['model']} (w={row['guidance']:g})"].append((row["steps"], row[metric]))
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, points in lines.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    if floor is not None:
        ax.axhline(floor, color="grey", linestyle="--", label="real data")
    ax.set_xscale("log", base=2)
    if metric.startswith("fd") or metric == "fid":
        ax.set_yscale("log")
    ax.set_xlabel("sampling steps")
    ax.set_ylabel(METRICS.get(metric, metric))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


CRITIC_ACCURACY = "log/critic_acc_t"  # discriminator.accuracy_by_level's keys, one per noise-level bucket


def read_training_log(log_path: str) -> dict[str, list[tuple[int, float]]]:
    """The ``loss/*``, ``eval/*`` and critic-accuracy series of a trainer's ``log.jsonl``: ``{key: [(step, value),
    ...]}``."""
    import json

    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    with open(log_path) as f:
        for line in f:
            entry = json.loads(line)
            for key, value in entry.items():
                if key.startswith(("eval/", "loss/", CRITIC_ACCURACY)) and isinstance(value, (int, float)):
                    series[key].append((entry["step"], value))
    return series


def plot_training_log(log_path: str, path: str) -> list[str]:
    """Plot every logged ``loss/*`` and ``eval/*`` series of a trainer's ``log.jsonl`` against the training step,
    one panel per series (``eval/*`` panels first), and the critic's accuracy per noise-level bucket in one panel
    with chance (0.5) marked, so that a critic that tells nothing apart shows while training. Returns the panels'
    keys; writes nothing if there are none."""
    series = read_training_log(log_path)
    critic = sorted(k for k in series if k.startswith(CRITIC_ACCURACY))
    keys = sorted((k for k in series if k not in critic), key=lambda k: (not k.startswith("eval/"), k))
    panels = keys + (["critic accuracy"] if critic else [])
    if not panels:
        return []
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        steps, values = zip(*series[key])
        ax.plot(steps, values, marker="o" if key.startswith("eval/") else None, markersize=3)
        name = key.split("/", 1)[1]
        ax.set_title(METRICS.get(name, key), fontsize=9)
    if critic:
        ax = axes[0][-1]
        for key in critic:
            k = int(key[len(CRITIC_ACCURACY) :])
            ax.plot(*zip(*series[key]), label=f"t bucket {k} (of 4 equal ranges of [0, 1])")
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_title("critic accuracy by noise level (0.5: chance)", fontsize=9)
        ax.legend(fontsize=6)
    for ax in axes[0]:
        ax.set_xlabel("training step")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return panels


def plot_runs(logs: dict[str, str], key: str, path: str, log_y: bool = True) -> None:
    """One line per run: the logged series ``key`` (e.g. ``eval/fd_domain``) of each ``{label: log.jsonl}``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, log_path in logs.items():
        points = read_training_log(log_path).get(key)
        if not points:
            raise ValueError(f"{log_path} has no logged {key!r}; was the run started with --eval-every?")
        ax.plot(*zip(*points), marker="o", label=label)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(METRICS.get(key.split("/", 1)[-1], key))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
