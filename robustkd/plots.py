"""Figures of a benchmark: the ID-vs-OOD plane with each method's curve, the cost of fine-tuning, activation drift."""

from __future__ import annotations

from pathlib import Path

from robustkd.shared.methods import curve_end

MARKERS = "osD^p*hXP8dH"
ALPHA_MARKERS = {"0.25": "<", "0.5": "v", "0.75": ">"}


def style(methods: list[str]) -> dict[str, tuple[tuple, str]]:
    """(colour, marker) per method: each method its own colour and marker; a WiSE point takes its curve's colour
    and a marker for its α."""
    import matplotlib

    colours = matplotlib.colormaps["tab10"].colors + matplotlib.colormaps["Dark2"].colors
    out: dict[str, tuple[tuple, str]] = {}
    for m in [m for m in methods if curve_end(m) is None]:
        i = len(out)
        out[m] = (colours[i % len(colours)], MARKERS[i % len(MARKERS)])
    for m in [m for m in methods if curve_end(m) is not None]:
        base = out.get(curve_end(m), ((0.5, 0.5, 0.5), "o"))
        out[m] = (base[0], ALPHA_MARKERS.get(m.rsplit("-", 1)[1], "."))
    return out


def _fig():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def id_vs_ood(results: dict, path: Path) -> None:
    """Mean points with 95% CI crosses; each curve (teacher → WiSE points → fine-tuned end) as a line."""
    plt = _fig()
    summary, curves = results["summary"], results.get("curves", {}).get("curves", {})
    st = style(list(summary))
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    on_curve = {p["method"] for pts in curves.values() for p in pts}
    for name, pts in curves.items():
        colour = st[pts[-1]["method"]][0]
        ax.plot([p["id_acc"] for p in pts], [p["ood_f1"] for p in pts], "-", color=colour, lw=1.2, alpha=0.8,
                label=f"{name} curve (α = 0 … 1)")
        for p in pts:
            ax.errorbar(p["id_acc"], p["ood_f1"], xerr=[[p["id_acc"] - p["id_lo"]], [p["id_hi"] - p["id_acc"]]],
                        yerr=[[p["ood_f1"] - p["ood_lo"]], [p["ood_hi"] - p["ood_f1"]]], fmt=st[p["method"]][1],
                        color=colour, ms=6, lw=0.8, capsize=2)
    for m, row in summary.items():
        if m in on_curve and curve_end(m) is not None:  # a WiSE point: drawn on its curve
            continue
        ci = row.get("ci", {})
        x, y = row["id_acc"]["mean"], row["ood_f1"]["mean"]
        xe = [[x - ci["id_lo"]], [ci["id_hi"] - x]] if ci else None
        ye = [[y - ci["ood_lo"]], [ci["ood_hi"] - y]] if ci else None
        ax.errorbar(x, y, xerr=xe, yerr=ye, fmt=st[m][1], color="black" if m == "teacher" else st[m][0],
                    ms=9 if m == "teacher" else 7, lw=0.8, capsize=2, label=m)
    ax.set_xlabel("ID test accuracy")
    ax.set_ylabel("OOD macro-F1")
    ax.set_title(f"{results['task']}: ID vs OOD (means, 95% CI crosses)")
    ax.legend(fontsize=7, ncol=2, loc="best")
    ax.grid(alpha=0.3)
    _save(plt, fig, path)


def _save(plt, fig, path: Path) -> None:  # noqa: ANN001 - matplotlib is imported lazily
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cost(results: dict, path: Path) -> None:
    plt = _fig()
    summary = results["summary"]
    trained = [m for m, r in summary.items() if r.get("train_s", {}).get("mean", 0) > 0 and curve_end(m) is None]
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.5 * len(trained) + 1.5))
    st = style(list(summary))
    axes[0].barh(trained, [summary[m]["train_s"]["mean"] for m in trained], color=[st[m][0] for m in trained])
    axes[0].set_xlabel("fine-tuning wall time (s)")
    axes[1].barh(trained, [summary[m].get("peak_rss_mb", {"mean": 0})["mean"] for m in trained],
                 color=[st[m][0] for m in trained])
    axes[1].set_xlabel("peak memory during fine-tuning (MB)")
    _save(plt, fig, path)


def drift(results: dict, path: Path) -> None:
    plt = _fig()
    summary = results["summary"]
    st = style(list(summary))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for m, row in summary.items():
        if "drift" in row and m != "teacher":
            layers = sorted(row["drift"], key=int)
            ax.plot([int(x) for x in layers], [row["drift"][x] for x in layers], marker=st[m][1], color=st[m][0],
                    label=m)
    ax.set_xlabel("layer (hidden_states index)")
    ax.set_ylabel("‖a_student − a_teacher‖ / ‖a_teacher‖ on OOD rows")
    ax.set_title("activation drift after fine-tuning")
    ax.legend(fontsize=7, ncol=2)
    _save(plt, fig, path)


def all_plots(results: dict, out: Path) -> list[str]:
    files = {"id_vs_ood.png": id_vs_ood, "cost.png": cost, "drift.png": drift}
    for name, fn in files.items():
        fn(results, out / name)
    return list(files)

