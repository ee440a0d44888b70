"""The lm study's figures and report (also used by the ablation study): curves, test
perplexity per depth, the summary tables, the verdict and the comparison with the paper."""

from __future__ import annotations

import math
from pathlib import Path

from hvadam_bench.reporting import figures as plots
from hvadam_bench.reporting.markdown import fmt, mean_std, table
from hvadam_bench.reporting.verdicts import comparable
from hvadam_bench.workloads.lm import LITERATURE_ADABELIEF_TEST

# --- figures --------------------------------------------------------------------------------


def curves_figure(depths: dict, path: Path, points_per_epoch: int = 1) -> None:
    """Validation perplexity per epoch (mean over the final seeds), one panel per depth."""
    import matplotlib.pyplot as plt  # after reporting.figures, which selects Agg

    figure, axes = plt.subplots(1, len(depths), figsize=(4.6 * len(depths), 3.8), squeeze=False)
    for axis, (depth, by_optimizer) in zip(axes.flat, depths.items()):
        for name, summary in by_optimizer.items():
            curve = summary["curve"]
            if curve:
                epochs = [(i + 1) / points_per_epoch for i in range(len(curve))]
                axis.plot(
                    epochs, curve, label=summary["label"], marker=".", **plots.optimizer_style(name)
                )
        axis.set_yscale("log")
        axis.set_title(f"{depth}-layer LSTM")
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3, which="both")
    axes.flat[0].set_ylabel("validation perplexity")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=7, fontsize=7)
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    plots.save(figure, path)


def test_figure(depths: dict, path: Path) -> None:
    """Test perplexity, mean ± std over the final seeds, per optimizer and depth."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(depths), figsize=(4.6 * len(depths), 4.2), squeeze=False)
    for axis, (depth, by_optimizer) in zip(axes.flat, depths.items()):
        order = _ranking(by_optimizer)
        means = [by_optimizer[n]["test_mean"] or math.nan for n in order]
        stds = [by_optimizer[n]["test_std"] or 0.0 for n in order]
        axis.barh(
            range(len(order)), means, xerr=stds,
            color=[plots.COLOURS.get(n, "black") for n in order],
        )  # fmt: skip
        axis.set_yticks(range(len(order)), [by_optimizer[n]["label"] for n in order], fontsize=7)
        axis.invert_yaxis()
        finite = [m for m in means if math.isfinite(m)]
        if finite:
            axis.set_xlim(min(finite) * 0.97, max(finite) * 1.03)
        axis.set_title(f"{depth}-layer LSTM: test perplexity")
        axis.grid(alpha=0.3, axis="x")
    figure.tight_layout()
    plots.save(figure, path)


# --- the report -----------------------------------------------------------------------------


def _ranking(by_optimizer: dict) -> list[str]:
    """Best (lowest mean validation perplexity of the final runs) first; diverged last."""

    # Equal to SIGNIFICANT_DIGITS digits: a tie, kept in the optimizers' order.
    return sorted(by_optimizer, key=lambda name: comparable(by_optimizer[name]["valid_mean"]))


def at_grid_edge(summary: dict) -> bool:
    """Whether the chosen lr is the grid's smallest or largest (the best may lie beyond)."""
    lrs = [g["lr"] for g in summary["grid"]]
    return len(lrs) > 1 and summary["lr"] in (min(lrs), max(lrs))


def summary_rows(by_optimizer: dict) -> tuple[list[list[str]], set[int]]:
    """One row per optimizer, best first; the best row's index is returned for bold."""
    rows = []
    order = _ranking(by_optimizer)
    for name in order:
        s = by_optimizer[name]
        grid = ", ".join(
            f"{fmt(g['lr'])}: {'div.' if g['diverged'] else fmt(g['valid'], 4)}" for g in s["grid"]
        )
        rows.append(
            [
                s["label"],
                fmt(s["lr"]) + (" (edge)" if at_grid_edge(s) else ""),
                mean_std(s["valid_mean"], s["valid_std"]),
                mean_std(s["test_mean"], s["test_std"]),
                f"{s['diverged_runs']}/{s['runs']}",
                grid,
            ]
        )
    return rows, {0}


SUMMARY_HEADERS = [
    "optimizer",
    "lr",
    "valid ppl",
    "test ppl",
    "diverged",
    "tuning grid (lr: valid ppl, seed 0)",
]


def describe_setup(config: dict, corpus: dict) -> str:
    """One paragraph saying exactly what was trained."""
    vocabulary = (
        f"the {config['vocabulary']} most frequent training words (the rest read as `<unk>`)"
        if config["vocabulary"]
        else f"PTB's full {corpus['vocabulary']}-word vocabulary"
    )
    tokens, used = corpus["tokens"], corpus["tokens_used"]
    train = (
        f"the first {used['train']:,} of the {tokens['train']:,} training words"
        if used["train"] < tokens["train"]
        else f"all {tokens['train']:,} training words"
    )
    evaluation = (
        f"the first {used['valid']:,} words of the valid split and {used['test']:,} of test"
        if (used["valid"], used["test"]) != (tokens["valid"], tokens["test"])
        else "the whole valid and test splits"
    )
    regularised = any(
        config[k]
        for k in (
            "dropout_output", "dropout_input", "dropout_between", "dropout_words", "weight_drop",
            "activation_reg", "temporal_reg", "weight_decay",
        )
    )  # fmt: skip
    regularisation = (
        f"dropout {config['dropout_output']} (output), {config['dropout_input']} (input), "
        f"{config['dropout_between']} (between layers), {config['dropout_words']} (words), "
        f"weight drop {config['weight_drop']}, AR {config['activation_reg']}, "
        f"TAR {config['temporal_reg']}, L2 {config['weight_decay']}"
        if regularised
        else "no dropout or other regularisation"
    )
    decay = (
        f"lr ÷10 after epochs {', '.join(map(str, config['lr_decay_epochs']))}"
        if config["lr_decay_epochs"]
        else "constant lr"
    )
    return (
        f"Penn Treebank (Mikolov split; {corpus['source']}), {vocabulary}. Trained on {train} "
        f"for {config['epochs']} epoch(s), validated {config['evals_per_epoch']} time(s) per "
        f"epoch ({config['batch_size']} streams, BPTT {config['bptt']}, "
        f"gradient norm clipped at {config['clip']}, {decay}); evaluated on {evaluation} "
        f"({config['eval_streams']} streams). Model: embedding {config['embedding']} "
        f"(initialised uniform in ±{config['init_range']}), inner "
        f"LSTM layers {config['hidden']} wide, last layer {config['embedding']} wide, decoder "
        f"tied to the embedding; {regularisation}. Device `{config['device']}`."
    )


def render_report(results: dict) -> str:
    meta_ = results["meta"]
    config = meta_["config"]
    depths = results["depths"]
    timing = meta_["timing"]
    lines = [
        "# Penn Treebank language modelling (paper Figure 5)",
        "",
        f"Generated by `hvadam-bench lm` (preset `{config['preset']}`). Do not edit by hand: "
        "rerun the command.",
        "",
        "**Protocol.** " + meta_["protocol"],
        f"Learning-rate grid of the adaptive methods: {list(config['lrs'])}; SGD (momentum 0.9) "
        f"gets its own grid, {list(config['sgd_lrs'])}, since its useful lr is orders of "
        "magnitude larger; β2 = 0.999 for all. Tuning seed 0; final seeds "
        f"{config['seeds']}.",
        "",
        "**Setup.** " + describe_setup(config, meta_["corpus"]),
        "",
        unigram_sentence(meta_["unigram_valid_ppl"]),
        "",
        timing_sentence(timing),
        "",
    ]
    lines += verdict(depths, meta_["unigram_valid_ppl"])
    lines += ["", "![validation perplexity per epoch](curves.png)", ""]
    lines += ["![test perplexity](test_perplexity.png)", ""]
    for depth, by_optimizer in depths.items():
        rows, bold = summary_rows(by_optimizer)
        lines += [f"## {depth}-layer LSTM", "", table(SUMMARY_HEADERS, rows, bold), ""]
    lines += [
        "Perplexities: mean ± std over the final seeds, at the last epoch; rows ordered by "
        "validation perplexity (which chose the lr); test was never used for a choice. "
        "`diverged`: final runs whose loss became NaN or inf, or whose validation perplexity "
        "exceeded the vocabulary size (worse than a uniform guess); they are left out of the "
        "means (`div.` in the grid). `(edge)`: the chosen lr is at the end of the grid, so a "
        "lr beyond it might do better.",
        "",
    ]
    lines += comparison(config, depths)
    return "\n".join(lines)


def timing_sentence(timing: dict) -> str:
    """How long the trials took, in words."""
    workers = timing.get("jobs") or 1
    where = f"{workers} worker processes" if workers > 1 else "one process"
    return (
        f"Timing: {timing.get('trials', timing['trials_run'])} trials, "
        f"{fmt(timing['seconds_per_trial'])} s each on average when they ran ({where}, "
        f"{timing['threads'] if workers == 1 else 1} thread each); run now: "
        f"{timing['trials_run']}, in {fmt(timing['wall_seconds'])} s of wall time (stored "
        "trials are not rerun)."
    )


PLATEAU = 0.95  # a validation perplexity above 95% of the unigram model's: still on its plateau


def unigram_sentence(unigram: float) -> str:
    return (
        f"**Reference.** Word frequencies alone (a unigram model of the training words used, "
        f"add-one smoothed) give validation perplexity {unigram:.1f} here; a run above "
        f"{PLATEAU:.0%} of it has learnt little from the context (the unigram plateau that "
        "LSTMs, deep ones most, must leave first)."
    )


def on_plateau(by_optimizer: dict, unigram: float) -> list[str]:
    """Labels of the optimizers whose mean validation perplexity is near the unigram model's."""
    return [
        by_optimizer[name]["label"]
        for name in _ranking(by_optimizer)
        if by_optimizer[name]["valid_mean"] is not None
        and by_optimizer[name]["valid_mean"] >= PLATEAU * unigram
    ]


def _versus(hv: dict, other: dict, role: str) -> str:
    """HVAdam's test perplexity against ``other``'s, in words."""
    if hv["test_mean"] is None or other["test_mean"] is None:
        return f"no finite test perplexity to compare with {other['label']}"
    gap = hv["test_mean"] - other["test_mean"]
    spread = max(hv["test_std"] or 0.0, other["test_std"] or 0.0)
    relation = (
        "within one std of" if abs(gap) <= spread else "better than" if gap < 0 else "worse than"
    )
    who = f"{role}, {other['label']}" if role else other["label"]
    return (
        f"test perplexity {relation} {who} "
        f"({mean_std(other['test_mean'], other['test_std'])}, difference {gap:+.2f})"
    )


def verdict(depths: dict, unigram: float) -> list[str]:
    """Where HVAdam ranks on each depth, from the measured perplexities alone."""
    lines = ["## Verdict", ""]
    for depth, by_optimizer in depths.items():
        order = _ranking(by_optimizer)
        best = order[0]
        if "hvadam" not in by_optimizer:
            lines.append(f"- {depth}-layer: best {by_optimizer[best]['label']} (HVAdam not run).")
            continue
        hv = by_optimizer["hvadam"]
        baselines = [n for n in order if not n.startswith("hvadam")]
        best_baseline = baselines[0] if baselines else None
        text = (
            f"- {depth}-layer: HVAdam ranks {order.index('hvadam') + 1}/{len(order)} on "
            f"validation perplexity (valid {mean_std(hv['valid_mean'], hv['valid_std'])}, "
            f"test {mean_std(hv['test_mean'], hv['test_std'])})"
        )
        compared = [n for n in (best_baseline, "adam") if n in by_optimizer]
        for name in dict.fromkeys(compared):  # the best baseline, then Adam, HVAdam's parent
            role = "the best baseline on validation" if name == best_baseline else ""
            text += "; " + _versus(hv, by_optimizer[name], role)
        if hv["diverged_runs"]:
            text += f"; {hv['diverged_runs']} of its final runs diverged"
        lines.append(text + ".")
        stuck = on_plateau(by_optimizer, unigram)
        if stuck:
            lines.append(f"  Still near the unigram plateau: {', '.join(stuck)}.")
    failed = sorted(
        {
            by_optimizer[n]["label"]
            for by_optimizer in depths.values()
            for n in by_optimizer
            if by_optimizer[n]["diverged_runs"] or by_optimizer[n]["valid_mean"] is None
        }
    )
    if failed:
        lines.append(f"- Diverged in some final run: {', '.join(failed)}.")
    return lines


def hidden_step_note(summaries: list[dict]) -> str | None:
    """How large HVAdam's hidden step had grown by the end of the final runs, in words."""
    deltas = [
        d
        for summary in summaries
        for d in summary["extra"].get("metric_delta") or []
        if d is not None
    ]
    if not deltas:
        return None
    largest = max(deltas)
    return (
        f"HVAdam's hidden step has size lr·10^(6δ-3), where δ is an EMA of cos(v, m̂) with a time "
        f"constant of 1/(1-β2) = 1000 steps: at the end of these runs δ was at most "
        f"{largest:.2f}, so the hidden step was at most {10 ** (6 * largest - 3):.1e}·lr. Short "
        "runs see little of it; HVAdam²'s second moment acts from the first step."
    )


def paper_scale(config: dict) -> bool:
    """Whether a run has the paper's scale: whole PTB, AWD-LSTM sizes, 200 epochs."""
    return (
        config["vocabulary"] is None
        and config["train_tokens"] is None
        and config["embedding"] >= 400
        and config["epochs"] >= 200
    )


def comparison(config: dict, depths: dict) -> list[str]:
    """The honest comparison with the paper's Figure 5."""
    literature = ", ".join(f"{d}-layer ≈ {v}" for d, v in LITERATURE_ADABELIEF_TEST.items())
    ours = ", ".join(
        f"{d}-layer {mean_std(by['adabelief']['test_mean'], by['adabelief']['test_std'])}"
        for d, by in depths.items()
        if "adabelief" in by
    )
    lines = [
        "## Comparison with the paper",
        "",
        "The paper shows Figure 5 (test perplexity of 1-, 2- and 3-layer LSTMs on PTB) only as "
        "a plot, without numbers in its text; it takes the curves of the other optimizers from "
        "Buvanesh and Panwar (2021), a reproduction of AdaBelief's experiments, and runs HVAdam "
        "in AdaBelief's code. Reported in the literature for AdaBelief after 200 epochs of that "
        f"AWD-LSTM-style recipe: test perplexity {literature} (approximate values, from a "
        "different code base, hyperparameters hand-picked per optimizer rather than selected on "
        "validation; AdaBelief's training script also keeps the epoch with the best *test* "
        "loss, which this suite never does).",
        "",
    ]
    if ours:
        lines += [f"Ours for AdaBelief: {ours}.", ""]
    if not paper_scale(config):
        lines += [
            "This run is the CPU preset (or another reduced setup): a small LSTM, a reduced "
            "vocabulary, a prefix of the training text and a few epochs. Its perplexities measure"
            " the first minutes of training and cannot be compared in absolute terms with the "
            "paper's (a smaller vocabulary alone lowers perplexity; the short budget raises it). "
            "What it can show is the ordering of the optimizers early in training under one "
            "protocol; the paper's claim concerns 200 epochs. Run `hvadam-bench lm --full "
            "--device cuda` to reproduce the paper's setup.",
        ]
        note = hidden_step_note([by[n] for by in depths.values() for n in by if n != "hvadam0"])
        if note:
            lines += ["", note]
    else:
        lines += [
            "This run follows the full recipe; the differences that remain with the paper are "
            "a fixed BPTT window (AWD-LSTM draws its length at random), lr chosen on validation "
            "from a grid rather than set per optimizer, and reporting the last epoch rather "
            "than the best one.",
        ]
    return lines
