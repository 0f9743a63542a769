"""Tables and plots of evaluation results (markdown for READMEs, PNG plots of a metric vs steps)."""

from __future__ import annotations

from collections import defaultdict


def results_table(result: dict) -> str:
    """A markdown table of ``result["results"]`` rows, with the real-vs-real floor first if present."""
    lines = ["| model | steps | guidance | FD | class accuracy | N |", "|---|---:|---:|---:|---:|---:|"]
    floor = result.get("real_floor")
    if floor:
        lines.append(f"| real data (floor) | - | - | {floor['fd']:.3f} | {floor.get('accuracy', float('nan')):.3f} "
                     f"| {floor['n']} |")
    for row in result["results"]:
        acc = row.get("accuracy")
        lines.append(f"| {row['model']} | {row['steps']} | {row['guidance']:g} | {row['fd']:.3f} | "
                     f"{'-' if acc is None else f'{acc:.3f}'} | {row['n']} |")
    return "\n".join(lines)


def plot_metric_vs_steps(rows: list[dict], metric: str, path: str, floor: float | None = None) -> None:
    """One line per (model, guidance): ``metric`` against sampling steps on a log axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = defaultdict(list)
    for row in rows:
        lines[f"{row['model']} (w={row['guidance']:g})"].append((row["steps"], row[metric]))
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, points in lines.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    if floor is not None:
        ax.axhline(floor, color="grey", linestyle="--", label="real vs real")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sampling steps")
    ax.set_ylabel(metric.upper())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
