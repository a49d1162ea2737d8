"""A suite's results beside the published figures: the printed table, results.json and the figure.

Measured figures are top-1 in percent on each task's test split. A task of
several runs shows min ← median → max, as the official README prints them
(VTAB-1k: the mean of the runs, its convention); VTAB-1k adds the means of its
Natural, Specialized and Structured groups and of all 19 tasks. The published
columns are those of the run's variant when it has any, otherwise of the
suite's reference variants, named in the header.
"""

import statistics

import numpy as np

from bit_keras import checkpoints
from bit_keras.suites.definitions import GROUPS, Figure

NONE = "—"
ALL = "All"


def references(suite, variant):
    """The variants whose published figures the table shows."""
    published = {name for task in suite.tasks for name in task.published} | set(suite.group_published)
    return (variant,) if variant in published else tuple(suite.references)


def summary(records):
    """min, median, mean, max, std (population) of the runs' top-1, or None for no runs."""
    values = [record["top1"] for record in records]
    if not values:
        return None
    return {
        "runs": len(values),
        "min": min(values),
        "median": statistics.median(values),
        "mean": statistics.fmean(values),
        "max": max(values),
        "std": float(np.std(values)),
    }


def measured_text(suite, stats):
    if stats is None:
        return NONE
    if suite.summary == "mean":
        return f"{stats['mean']:.2f}" + (f" ± {stats['std']:.2f}" if stats["runs"] > 1 else "")
    if stats["runs"] == 1:
        return f"{stats['median']:.2f}"
    return f"{stats['min']:.1f} ← {stats['median']:.1f} → {stats['max']:.1f}"


def _figure_text(figure):
    if figure is None:
        return NONE
    return str(figure) + (f" ({figure.source})" if figure.source and figure.source not in ("paper",) else "")


def _columns(suite, variant):
    refs = references(suite, variant)
    first = ["task"] + (["group"] if suite.name == "vtab1k" else []) + ["runs", "measured"]
    return first + [f"published {ref}" for ref in refs], refs


_WIDTHS = {"task": 22, "group": 12, "runs": 5, "measured": 24}
_PUBLISHED_WIDTH = 28


def _line(cells, names):
    return "  ".join(f"{cell:<{_WIDTHS.get(name, _PUBLISHED_WIDTH)}}" for cell, name in zip(cells, names)).rstrip()


def header(suite, variant):
    names, _ = _columns(suite, variant)
    return _line(names, names) + "\n" + _line(["-" * _WIDTHS.get(n, _PUBLISHED_WIDTH) for n in names], names)


def row(suite, task, records, variant):
    """One task's line: its measured figure beside each published one."""
    names, refs = _columns(suite, variant)
    stats = summary(records)
    cells = [task.name] + ([task.group] if suite.name == "vtab1k" else []) + [str(stats["runs"] if stats else 0)]
    cells += [measured_text(suite, stats)] + [_figure_text(task.published.get(ref)) for ref in refs]
    return _line(cells, names)


def group_means(suite, summaries):
    """VTAB-1k: {group: (mean of the measured tasks' figures, tasks measured, tasks in the group)}, "All" last."""
    groups = {}
    for group in (*GROUPS, ALL):
        members = [task for task in suite.tasks if group in (ALL, task.group)]
        done = [summaries[task.name]["mean"] for task in members if summaries.get(task.name)]
        groups[group] = {"measured": statistics.fmean(done) if done else None, "tasks": len(done), "of": len(members)}
    return groups


def results(suite, variant, records, weights, settings):
    """The JSON-able results: every run, each task's summary and published figures, group means, sources."""
    refs = references(suite, variant)
    summaries = {name: summary(runs) for name, runs in records.items()}
    tasks = []
    for task in suite.tasks:
        published = {ref: _figure_json(task.published.get(ref)) for ref in refs}
        tasks.append(
            {
                "name": task.name,
                "group": task.group,
                "summary": summaries[task.name],
                "published": published,
                "runs": records[task.name],
            }
        )
    out = {
        "suite": suite.name,
        "title": suite.title,
        "variant": variant,
        "mode": "released per-task models" if settings.evaluate_released else "fine-tuned",
        "weights": None if weights is None else str(weights),
        "summary": suite.summary,
        "references": list(refs),
        "sources": {ref: suite.sources.get(ref) for ref in refs},
        "tasks": tasks,
    }
    if suite.name == "vtab1k":
        groups = group_means(suite, summaries)
        for group, entry in groups.items():
            entry["published"] = {ref: _figure_json(suite.group_published.get(ref, {}).get(group)) for ref in refs}
        out["groups"] = groups
    return out


def _figure_json(figure):
    if figure is None:
        return None
    return {"value": figure.value, "min": figure.low, "max": figure.high, "source": figure.source, "decimals": figure.decimals}


def _figure_from_json(entry):
    return None if entry is None else Figure(entry["value"], entry["min"], entry["max"], entry["source"], entry["decimals"])


def table(suite, results):
    """The whole table as text: every task, then (VTAB-1k) the group means, then where the published figures come from."""
    variant = results["variant"]
    names, refs = _columns(suite, variant)
    records = {task["name"]: task["runs"] for task in results["tasks"]}
    lines = [f"{suite.name}: {suite.title}", f"{variant} ({results['mode']}), top-1 % on the test splits", header(suite, variant)]
    lines += [row(suite, task, records[task.name], variant) for task in suite.tasks]
    if "groups" in results:
        lines.append(_line(["-" * _WIDTHS.get(n, _PUBLISHED_WIDTH) for n in names], names))
        for group, entry in results["groups"].items():
            label = f"{'all' if group == ALL else group} ({entry['of']})"
            measured = NONE if entry["measured"] is None else f"{entry['measured']:.2f}"
            if entry["measured"] is not None and entry["tasks"] < entry["of"]:
                measured += f" ({entry['tasks']} of {entry['of']} tasks)"
            cells = [label, "", str(entry["tasks"]), measured]
            cells += [_figure_text(_figure_from_json(entry["published"][ref])) for ref in refs]
            lines.append(_line(cells, names))
    lines.append("")
    for ref in refs:
        lines.append(f"published {ref}: {results['sources'].get(ref) or 'nothing published'}")
    missing = [task.name for task in suite.tasks if all(task.published.get(ref) is None for ref in refs)]
    if missing and suite.name == "vtab1k":
        lines.append(f"{NONE}: no per-task figure was published for these variants; the README gives group means only.")
    return "\n".join(lines)


def plot(suite, results, path):
    """Bars of the measured figure beside each published one, per task (and, for VTAB-1k, per group)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    labels, measured, published = [], [], {ref: [] for ref in results["references"]}
    for task in results["tasks"]:
        stats = task["summary"]
        labels.append(task["name"])
        measured.append(np.nan if stats is None else stats[results["summary"]])
        for ref in published:
            figure = task["published"][ref]
            published[ref].append(np.nan if figure is None else figure["value"])
    for group, entry in results.get("groups", {}).items():
        labels.append(f"{group} mean")
        measured.append(np.nan if entry["measured"] is None else entry["measured"])
        for ref in published:
            figure = entry["published"][ref]
            published[ref].append(np.nan if figure is None else figure["value"])
    series = [(f"measured ({results['variant']})", measured)] + [
        (f"published {ref}", values) for ref, values in published.items()
    ]
    x = np.arange(len(labels))
    width = 0.8 / len(series)
    figure, axes = pyplot.subplots(figsize=(max(6, 0.5 * len(labels) + 2), 4.5), dpi=100)
    for i, (name, values) in enumerate(series):
        axes.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
    axes.set_xticks(x, labels, rotation=60, ha="right", fontsize="small")
    axes.set_ylim(0, 100)
    axes.set_ylabel("top-1 accuracy on the test split (%)")
    axes.set_title(f"{suite.name}: {results['variant']} ({results['mode']}) against the published figures")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    with checkpoints.atomic_file(path, overwrite=True) as tmp:
        figure.savefig(tmp, format="png")
    pyplot.close(figure)
