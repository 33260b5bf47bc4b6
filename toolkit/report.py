"""Rendering, from a run directory alone (never from live objects): the terminal
table, report.md and a self-contained report.html (inline CSS and SVG, no network)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from toolkit.runs import atomic_write, load_run

ARM_COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]
LABELS = {"exact_match": "Exact match", "token_f1": "Token F1", "rouge_l": "ROUGE-L", "contains": "Contains answer",
          "embedding_similarity": "Embedding sim.", "context_recall": "Context recall",
          "context_precision": "Context precision", "hit_at_k": "Hit@k", "mrr": "MRR", "accuracy": "Accuracy",
          "macro_precision": "Macro precision", "macro_recall": "Macro recall", "macro_f1": "Macro F1",
          "unmapped_rate": "Unmapped outputs"}


def ok_arms(results: dict) -> dict[str, dict]:
    return {n: r for n, r in results["strategies"].items() if r.get("status") == "success"}


def headline_metrics(results: dict, n: int = 4) -> list[str]:
    arms = ok_arms(results)
    present = [m for m in results.get("metrics_order", []) if any(m in r["metrics"] for r in arms.values())]
    return present[:n]


def fmt_mean(m: dict | None, digits: int = 2) -> str:
    return f"{m['mean']:.{digits}f}" if m else "n/a"


def fmt_interval(m: dict | None, digits: int = 2) -> str:
    return f"[{m['ci_low']:.{digits}f}, {m['ci_high']:.{digits}f}]" if m else ""


def fmt_ci(m: dict | None, digits: int = 3) -> str:
    if not m:
        return "n/a"
    return f"{m['mean']:.{digits}f} [{m['ci_low']:.{digits}f}, {m['ci_high']:.{digits}f}]"


def recommendation(results: dict) -> list[str]:
    """Plain sentences generated from the numbers."""
    arms = ok_arms(results)
    heads = headline_metrics(results, 1)
    if not arms or not heads:
        return ["No arm finished, so there is nothing to recommend."]
    m = heads[0]
    hib = next(iter(arms.values()))["metrics"].get(m, {}).get("higher_is_better", True)
    scored = {n: r for n, r in arms.items() if m in r["metrics"]}
    best = (max if hib else min)(scored, key=lambda n: scored[n]["metrics"][m]["mean"])
    b = scored[best]
    lo, hi = b["metrics"][m]["ci_low"], b["metrics"][m]["ci_high"]
    close = [n for n in scored if n != best and lo <= scored[n]["metrics"][m]["mean"] <= hi]
    name = LABELS.get(m, m)
    out = [f"Best on {name}: {best} ({fmt_ci(b['metrics'][m])}, 95% CI), set up in {b['cost']['setup_s']:.0f} s, "
           f"p50 latency {b['cost']['latency_p50_s']:.2f} s per answer."]
    if close:
        cheaper = min(close, key=lambda n: (scored[n]["cost"]["setup_s"], scored[n]["cost"]["compute_s_per_answer"]))
        c = scored[cheaper]
        out.append(f"{', '.join(close)} {'falls' if len(close) == 1 else 'fall'} inside that interval, so the data "
                   f"does not separate them from {best}; of those, {cheaper} is the cheapest "
                   f"(setup {c['cost']['setup_s']:.0f} s, p50 {c['cost']['latency_p50_s']:.2f} s).")
    else:
        out.append(f"No other arm's mean falls inside {best}'s interval.")
    return out


# --- terminal -----------------------------------------------------------------

def terminal_table(results: dict):
    from rich.table import Table
    heads = headline_metrics(results)
    t = Table(title=f"{results['suite']} · {results['data']['test_scored']} test examples · "
                    f"{results.get('device', '?')}/{results.get('dtype', '?')}", show_lines=False)
    t.add_column("arm", style="bold")
    for m in heads:
        t.add_column(f"{LABELS.get(m, m)}\n(95% CI)", justify="right")
    for c in ("setup s", "p50 s", "tokens in/out"):
        t.add_column(c, justify="right")
    for name, r in results["strategies"].items():
        if r.get("status") != "success":
            t.add_row(name, *[f"[red]{r.get('status')}[/]"] + [""] * (len(heads) + 2))
            continue
        c = r["cost"]
        t.add_row(name, *[fmt_ci(r["metrics"].get(m), 2) for m in heads], f"{c['setup_s']:.1f}",
                  f"{c['latency_p50_s']:.2f}", f"{c['prompt_tokens_mean']:.0f}/{c['completion_tokens_mean']:.0f}")
    return t


# --- figures (inline SVG) -------------------------------------------------------

def _svg(fig) -> str:
    import matplotlib.pyplot as plt
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


def figures(results: dict) -> dict[str, str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    matplotlib.rcParams["svg.fonttype"] = "none"

    arms = ok_arms(results)
    if not arms:
        return {}
    colors = {n: ARM_COLORS[i % len(ARM_COLORS)] for i, n in enumerate(results["strategies"])}
    heads = headline_metrics(results, 6)
    out = {}
    if heads:
        m = heads[0]
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for n, r in arms.items():
            if m not in r["metrics"]:
                continue
            v = r["metrics"][m]
            x = r["cost"]["latency_p50_s"]
            ax.errorbar([x], [v["mean"]], yerr=[[max(0.0, v["mean"] - v["ci_low"])], [max(0.0, v["ci_high"] - v["mean"])]],
                        fmt="o", color=colors[n], capsize=4, markersize=8, label=n)
            ax.annotate(n, (x, v["mean"]), textcoords="offset points", xytext=(7, 5), fontsize=9)
        ax.margins(x=0.2, y=0.15)
        ax.set_xlabel("p50 latency per answer (s)")
        ax.set_ylabel(f"{LABELS.get(m, m)} (95% CI)")
        ax.set_title("Quality vs latency")
        ax.grid(alpha=0.3)
        out["quality_vs_latency"] = _svg(fig)

        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        width = 0.8 / max(1, len(arms))
        for i, (n, r) in enumerate(arms.items()):
            xs, ys, lo, hi = [], [], [], []
            for j, mm in enumerate(heads):
                if mm in r["metrics"]:
                    v = r["metrics"][mm]
                    xs.append(j + i * width)
                    ys.append(v["mean"])
                    lo.append(max(0.0, v["mean"] - v["ci_low"]))
                    hi.append(max(0.0, v["ci_high"] - v["mean"]))
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, color=colors[n], label=n)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(heads))])
        ax.set_xticklabels([LABELS.get(h, h).replace(" ", "\n", 1) for h in heads], fontsize=9)
        ax.set_ylabel("score (95% CI whiskers)")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=8, ncol=min(5, len(arms)), loc="upper center", bbox_to_anchor=(0.5, -0.12))
        ax.set_title("Metrics per arm")
        ax.grid(axis="y", alpha=0.3)
        out["metric_bars"] = _svg(fig)
    return out


# --- documents ------------------------------------------------------------------

def _examples(samples: list[dict], arms: list[str], n: int = 12) -> list[dict]:
    by_id: dict[str, dict] = {}
    for s in samples:
        row = by_id.setdefault(s["id"], {"input": s["input"], "target": s["target"], "answers": {}})
        row["answers"][s["strategy"]] = s["output"]
    return list(by_id.values())[:n]


def render_markdown(results: dict, samples: list[dict]) -> str:
    heads = headline_metrics(results, 9)
    lines = [f"# adaptbench: {results['suite']}", ""]
    if results.get("description"):
        lines += [results["description"], ""]
    lines += ["**Recommendation.** " + " ".join(recommendation(results)), ""]
    lines += [f"Status: {results['status']} · {results['data']['test_scored']} test examples · generator "
              f"`{results.get('generator')}` on {results.get('device')}/{results.get('dtype')}", ""]
    lines.append("| arm | " + " | ".join(LABELS.get(m, m) for m in heads) + " | setup s | p50 s | p95 s | tokens in/out |")
    lines.append("|---" * (len(heads) + 5) + "|")
    for name, r in results["strategies"].items():
        if r.get("status") != "success":
            lines.append(f"| {name} | {r.get('status')}: {r.get('error', '')} |")
            continue
        c = r["cost"]
        lines.append(f"| {name} | " + " | ".join(fmt_ci(r["metrics"].get(m)) for m in heads) +
                     f" | {c['setup_s']:.1f} | {c['latency_p50_s']:.2f} | {c['latency_p95_s']:.2f} | "
                     f"{c['prompt_tokens_mean']:.0f}/{c['completion_tokens_mean']:.0f} |")
    lines += ["", "Metrics are means over the test examples with 95% bootstrap confidence intervals. "
              "Setup is the one-off cost (index build, training); latency is the wall time of the batch an answer came in.", ""]
    if results["data"].get("notes"):
        lines += ["Data: " + "; ".join(results["data"]["notes"]) + ".", ""]
    return "\n".join(lines) + "\n"


def render_html(results: dict, samples: list[dict], env: dict, config_text: str) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape
    jenv = Environment(loader=PackageLoader("toolkit", "templates"), autoescape=select_autoescape(["html"]))
    arms = list(results["strategies"])
    colors = {n: ARM_COLORS[i % len(ARM_COLORS)] for i, n in enumerate(arms)}
    heads = headline_metrics(results, 9)
    return jenv.get_template("report.html").render(
        r=results, heads=heads, labels=LABELS, fmt_ci=fmt_ci, fmt_mean=fmt_mean, fmt_interval=fmt_interval, colors=colors, recommendation=recommendation(results),
        summaries={n: info_summary(a) for n, a in results["strategies"].items()},
        figures=figures(results), examples=_examples(samples, arms), env=env, config_text=config_text,
        env_json=json.dumps(env, indent=2))


def render_run(run_dir: Path) -> tuple[Path, Path]:
    results, samples = load_run(run_dir)
    env = json.loads((run_dir / "env.json").read_text()) if (run_dir / "env.json").exists() else {}
    config_text = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").exists() else ""
    md, html = run_dir / "report.md", run_dir / "report.html"
    atomic_write(md, render_markdown(results, samples))
    atomic_write(html, render_html(results, samples, env, config_text))
    return md, html


def info_summary(r: dict[str, Any]) -> str:
    i = r.get("info", {})
    parts = []
    if "train_examples" in i:
        evals = [h["eval_loss"] for h in i.get("history", []) if "eval_loss" in h]
        parts.append(f"LoRA on {i['train_examples']} examples, {i['train_tokens']} tokens in {i['train_s']:.0f} s "
                     f"({i['tokens_per_s']:.0f} tok/s, {i['device']}/{i['dtype']})"
                     + (f", validation loss per epoch: {', '.join(f'{x:.3f}' for x in evals)}" if evals else "")
                     + (" — adapter reused from cache" if i.get("cached") else ""))
    if "chunks" in i:
        parts.append(f"index of {i['chunks']} chunks")
    if "pool_size" in i:
        parts.append(f"pool of {i['pool_size']} train examples")
    return "; ".join(parts)
