"""Self-contained HTML report of a backtest (images embedded), from ``backtest.json``.

Sections: verdict and its checks (with an IN-SAMPLE warning off an untouched test split);
the random null (exposure, turnover and costs it matches, policy vs random); equity band
of the K passes (median, 5-95%) vs the exposure-matched random band and buy-and-hold;
drawdown; histogram of pass results vs random passes; policy sigma over time against the
price; per-seed metrics; configuration.
"""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

SECTIONS = (
    "Verdict",
    "Random null",
    "Equity",
    "Drawdown",
    "Pass results",
    "Policy sigma",
    "Per-seed metrics",
    "Configuration",
)

#: Metrics shown in the per-seed table, with their display format.
TABLE_METRICS = {
    "total_log_return": "{:+.4f}",
    "sharpe": "{:.2f}",
    "sortino": "{:.2f}",
    "calmar": "{:.2f}",
    "max_drawdown": "{:.3f}",
    "max_drawdown_duration": "{:.0f}",
    "hit_rate": "{:.3f}",
    "profit_factor": "{:.2f}",
    "turnover": "{:.1f}",
    "exposure": "{:.2f}",
    "n_trades": "{:.0f}",
    "costs": "{:.4f}",
    "var_95": "{:.4f}",
    "cvar_95": "{:.4f}",
    "psr": "{:.3f}",
    "dsr": "{:.3f}",
    "min_trl": "{:.0f}",
}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1100px;color:#222;padding:0 1rem}
h1{margin-bottom:.2rem} h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
.label{display:inline-block;padding:.3rem .8rem;border-radius:.4rem;font-weight:700;
color:#fff;font-size:1.3rem}
.LEARNED{background:#1b7f3b}.RANDOM{background:#9b1c1c}.INCONCLUSIVE{background:#8a6d00}.IN-SAMPLE{background:#b45309}
.CONSISTENT-BUT-NO-EDGE{background:#1f4e8c}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:right}
th{background:#f4f4f4} td.l,th.l{text-align:left}
img{max-width:100%} pre{background:#f7f7f7;padding:.8rem;overflow-x:auto;font-size:.8rem}
.pass{color:#1b7f3b;font-weight:600}.fail{color:#9b1c1c;font-weight:600}
"""


def render_report(result: dict[str, Any]) -> str:
    """The report's HTML (one self-contained string) for a backtest result dict."""
    s = result["series"]
    times = pd.DatetimeIndex(pd.to_datetime(s["times"]))
    verdict = result["verdict"]
    body = [
        "<h1>mlkv-trader backtest report</h1>",
        f"<p>{_esc(len(result['policies']))} policy seed(s) x "
        f"{_esc(result['settings']['passes'])} stochastic passes over {len(times):,} bars "
        f"({_esc(times[0])} .. {_esc(times[-1])}).</p>",
        _section("Verdict", _verdict_html(verdict)),
        _section("Random null", _null_html(result)),
        _section(
            "Equity",
            _img(_equity_plot(times, s))
            + "<p>Cumulative net log return: policy passes (median and 5-95% band over all "
            "seeds and passes), exposure-matched random passes, deterministic passes and "
            "buy-and-hold.</p>",
        ),
        _section("Drawdown", _img(_drawdown_plot(times, s))),
        _section(
            "Pass results",
            _img(_histogram_plot(result["pass_totals"]))
            + "<p>Total log return of each stochastic policy pass vs each random pass. A "
            "policy that learned a rule has a narrow histogram, far narrower than the "
            "random one.</p>",
        ),
        _section("Policy sigma", _img(_sigma_plot(times, s))),
        _section("Per-seed metrics", _metrics_html(result)),
        _section(
            "Configuration",
            "<pre>" + _esc(json.dumps(result["settings"], indent=2)) + "</pre>",
        ),
    ]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>mlkv-trader backtest: "
        f"{_esc(verdict['label'])}</title><style>{_CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>"
    )


def _esc(value: Any) -> str:
    """The one way a value enters the HTML: as text, with ``& < > " '`` escaped."""
    return html.escape(str(value), quote=True)


def _section(title: str, content: str) -> str:
    anchor = title.lower().replace(" ", "-")
    return f"<h2 id='{_esc(anchor)}'>{_esc(title)}</h2>\n{content}"


def _verdict_html(v: dict[str, Any]) -> str:
    rows = []
    for check in v["checks"].values():
        p = _fmt(check["p_value"], "{:.4g}")
        ok = (
            "<span class='pass'>pass</span>"
            if check["passed"]
            else "<span class='fail'>fail</span>"
        )
        stat = _fmt(check["statistic"], "{:.4g}")
        rows.append(
            f"<tr><td class='l'>{_esc(check['name'])}</td><td>{_esc(stat)}</td>"
            f"<td>{_esc(p)}</td><td>{_fmt(check['threshold'])}</td><td>{ok}</td>"
            f"<td class='l'>{_esc(check['description'])}</td></tr>"
        )
    headline = v["explanation"].split("\n")[0]  # the checks follow in the table
    return (
        f"<p><span class='label {_esc(v['label'])}'>{_esc(v['label'])}</span>"
        f"</p>{_sample_html(v)}<p>{_esc(headline)}</p><table><tr><th class='l'>check</th>"
        "<th>statistic</th><th>p-value</th><th>threshold</th><th>result</th>"
        "<th class='l'>what was measured</th></tr>" + "".join(rows) + "</table>"
        f"<p>Dispersion ratio rho = {_fmt(v['rho'])}; share of seeds that are decisive with "
        f"both edges significant on their own: {_fmt(v['seed_share'], '{:.0%}')}.</p>"
    )


def _sample_html(v: dict[str, Any]) -> str:
    """Which bars were judged; a warning banner when they are not an untouched test split."""
    sample = v.get("sample") or {}
    split, ck = sample.get("split", "test"), sample.get("checkpoint")
    what = f"{split} split" + (f", {ck} checkpoint" if ck else "")
    if sample.get("selected_on"):
        what += f" (chosen on the {sample.get('selected_on')} split)"
    trials = sample.get("n_trials")
    what += f"; trials behind it (configs x checkpoints x seeds): {trials}" if trials else ""
    if v.get("in_sample"):
        return (
            "<p class='fail'>IN-SAMPLE: these bars are not an untouched test split ("
            + _esc(what)
            + "). The statistics are no evidence of out-of-sample skill"
            + (
                f"; they would say {_esc(v.get('statistical_label'))}"
                if v.get("statistical_label") != v.get("label")
                else ""
            )
            + ".</p>"
        )
    return f"<p>Judged on the {_esc(what)}.</p>"


def _null_html(result: dict[str, Any]) -> str:
    """What the exposure-matched random passes match, policy vs random."""
    null = result.get("random_null")
    if not null:
        return "<p>(not recorded)</p>"
    rows = "".join(
        f"<tr><td class='l'>{_esc(name)}</td><td>{_fmt(null.get('policy_' + key))}</td>"
        f"<td>{_fmt(null.get('random_' + key))}</td></tr>"
        for name, key in (
            ("mean exposure |p|", "exposure"),
            ("turnover per pass", "turnover"),
            ("costs per pass", "costs"),
        )
    )
    return (
        f"<p>{_esc(null.get('design', ''))}.</p><table><tr><th class='l'>matched on</th>"
        f"<th>policy passes</th><th>random passes</th></tr>{rows}</table>"
    )


def _metrics_html(result: dict[str, Any]) -> str:
    metrics = result["metrics"]
    rows = [(row["name"], row["metrics"]) for row in metrics["rows"]]
    head = "".join(f"<th>{_esc(k)}</th>" for k in TABLE_METRICS)
    lines = []
    for name, m in rows:
        cells = "".join(f"<td>{_fmt(m.get(k), fmt)}</td>" for k, fmt in TABLE_METRICS.items())
        lines.append(f"<tr><td class='l'>{_esc(name)}</td>{cells}</tr>")
    extra = ""
    if "across_seeds" in metrics:
        a = metrics["across_seeds"]
        extra = (
            f"<p>Across seeds: IQM of the mean pass log return {_fmt(a['iqm'], '{:+.4f}')} "
            f"(95% stratified-bootstrap CI {_fmt(a['iqm_ci'][0], '{:+.4f}')} .. "
            f"{_fmt(a['iqm_ci'][1], '{:+.4f}')}); probability of improvement over the "
            f"random passes {_fmt(a['poi_vs_random'], '{:.3f}')}.</p>"
        )
    return (
        f"<div style='overflow-x:auto'><table><tr><th class='l'>run</th>{head}</tr>"
        + "".join(lines)
        + "</table></div>"
        + extra
    )


def _fmt(x: Any, fmt: str = "{:.3g}") -> str:
    """A number formatted with ``fmt`` (``-`` for missing/non-finite), escaped; anything
    else (a tampered JSON) as escaped text."""
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return _esc(x)
    return _esc(fmt.format(x))


def _img(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f"<img alt='plot' src='data:image/png;base64,{data}'>"


def _arr(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _equity_plot(times: pd.DatetimeIndex, s: dict[str, Any]) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(11, 4.2))
    rb, pb = s["random_band"], s["policy_band"]
    ax.fill_between(
        times,
        _arr(rb["q05"]),
        _arr(rb["q95"]),
        color="tab:red",
        alpha=0.15,
        label="random passes 5-95%",
    )
    ax.plot(times, _arr(rb["q50"]), color="tab:red", lw=1, ls="--", label="random median")
    ax.fill_between(
        times,
        _arr(pb["q05"]),
        _arr(pb["q95"]),
        color="tab:blue",
        alpha=0.25,
        label="policy passes 5-95%",
    )
    ax.plot(times, _arr(pb["q50"]), color="tab:blue", lw=1.5, label="policy median")
    for i, det in enumerate(s["deterministic"]):
        ax.plot(
            times,
            _arr(det),
            color="navy",
            lw=0.6,
            alpha=0.6,
            label="deterministic passes" if i == 0 else None,
        )
    ax.plot(times, _arr(s["buy_and_hold"]), color="black", lw=1.2, label="buy-and-hold")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_ylabel("cumulative log return")
    ax.legend(loc="upper left", fontsize=8, ncol=3)
    return fig


def _drawdown_plot(times: pd.DatetimeIndex, s: dict[str, Any]) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(11, 2.8))
    for name, series, color in (
        ("policy median", s["policy_band"]["q50"], "tab:blue"),
        ("buy-and-hold", s["buy_and_hold"], "black"),
    ):
        cum = _arr(series)
        ax.fill_between(
            times,
            cum - np.maximum.accumulate(np.maximum(cum, 0.0)),
            0,
            alpha=0.3,
            color=color,
            label=name,
        )
    ax.set_ylabel("drawdown (log)")
    ax.legend(loc="lower left", fontsize=8)
    return fig


def _histogram_plot(totals: dict[str, Any]) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(8, 3.2))
    policy = np.concatenate([_arr(x) for x in totals["policy"]])
    random = np.concatenate([_arr(x) for x in totals["random"]])
    both = np.concatenate([policy, random])
    bins = np.linspace(both.min(), both.max() + 1e-12, 40)
    ax.hist(random, bins=bins, alpha=0.5, color="tab:red", label=f"random passes ({random.size})")
    ax.hist(policy, bins=bins, alpha=0.6, color="tab:blue", label=f"policy passes ({policy.size})")
    ax.set_xlabel("total log return of a pass")
    ax.legend(fontsize=8)
    return fig


def _sigma_plot(times: pd.DatetimeIndex, s: dict[str, Any]) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(11, 3.2))
    ax.plot(times, _arr(s["price"]), color="black", lw=0.8, label="close")
    ax.set_ylabel("price")
    ax2 = ax.twinx()
    for i, sig in enumerate(s["sigma"]):
        sig = _arr(sig)
        if np.isfinite(sig).any():
            ax2.plot(times, sig, lw=0.7, alpha=0.8, label=f"sigma seed {i}")
    ax2.set_ylabel("policy sigma (mean over passes)")
    ax2.legend(loc="upper right", fontsize=8)
    return fig
