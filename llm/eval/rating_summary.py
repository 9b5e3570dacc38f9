"""What a rating session's ratings say, written beside them and to MLflow as they arrive.

Per model (the command line's model_a and model_b, never the page's A/B sides): wins, losses and ties;
the win rate with ties counted as half a win, and the strict one without; the Bradley-Terry score with a
95% Wald interval (`llm.eval.bradley_terry`, ties split, one virtual tie per pair as the prior), and the
fitted probability that model_a's answer is preferred.

MLflow: one run per session (tag `llmpipe.rate_session`), found again when the session continues. Its
metrics are logged at step = number of ratings after every rating; `rating/summary.json` and
`rating/summary.md` are replaced each time. Notes and prompts stay in the session folder.
"""

from __future__ import annotations

import json
import logging
import math

from llm import storage
from llm.eval.bradley_terry import WinRecord, fit_bradley_terry, win_matrix
from llm.eval.rating import MODELS, RatingSession
from llm.tracking import RunTarget, Tracker

#: Virtual ties between the two models: keeps the score finite while one model has won every rating.
BT_PRIOR = 1.0
SUMMARY_JSON, SUMMARY_MD = "summary.json", "summary.md"
SESSION_TAG = "llmpipe.rate_session"
log = logging.getLogger(__name__)


def summarize(session: RatingSession) -> dict:
    """Counts, win rates and Bradley-Terry scores of the session's ratings so far."""
    winners = [r["winner"] for r in session.ratings()]
    records = {m: WinRecord(wins=winners.count(m), losses=winners.count(MODELS[1 - i]), ties=winners.count("tie"))
               for i, m in enumerate(MODELS)}
    fit = fit_bradley_terry(win_matrix([(*MODELS, None if w == "tie" else w) for w in winners], list(MODELS)),
                            list(MODELS), prior=BT_PRIOR)
    models = {}
    for i, m in enumerate(MODELS):
        low, high = fit.interval(i)
        models[m] = {"ref": session.models[m].ref, "wins": records[m].wins, "losses": records[m].losses,
                     "ties": records[m].ties, "win_rate": _number(records[m].win_rate),
                     "strict_win_rate": _number(records[m].strict_win_rate),
                     "bt_score": float(fit.scores[i]), "bt_ci_low": low, "bt_ci_high": high}
    diff_low, diff_high = fit.difference_interval(0, 1)
    return {
        "session": session.name, "ratings": len(winners), "prompts": len(session.prompts),
        "ties": winners.count("tie"), "tie_rate": _number(records["model_a"].tie_rate), "models": models,
        "model_a_preferred_probability": fit.beats(0, 1),
        "model_a_preferred_probability_ci": [_sigmoid(diff_low), _sigmoid(diff_high)],
        "bradley_terry": {"ties": "split (half a win each)", "prior_virtual_ties": BT_PRIOR,
                          "interval": "95% Wald, from the Fisher information at the fit"},
    }


def _number(x: float) -> float | None:
    return None if math.isnan(x) else x


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def summary_markdown(summary: dict) -> str:
    """The summary as a short Markdown report (what `llmpipe rate --summary` prints)."""
    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    lines = [f"# Human rating: {summary['session']}", "",
             f"{summary['ratings']} rated of {summary['prompts']} prompts, {summary['ties']} ties.", "",
             "| model | wins | losses | ties | win rate (ties half) | strict win rate | Bradley-Terry score (95% CI) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for m, s in summary["models"].items():
        lines.append(f"| {m}: `{s['ref']}` | {s['wins']} | {s['losses']} | {s['ties']} | {pct(s['win_rate'])} | "
                     f"{pct(s['strict_win_rate'])} | {s['bt_score']:+.3f} ({s['bt_ci_low']:+.3f} to "
                     f"{s['bt_ci_high']:+.3f}) |")
    low, high = summary["model_a_preferred_probability_ci"]
    lines += ["", f"P(model_a preferred) = {pct(summary['model_a_preferred_probability'])} "
              f"(95% CI {pct(low)} to {pct(high)}); scores are log-strengths, ties split, "
              f"{summary['bradley_terry']['prior_virtual_ties']:g} virtual tie as prior.", ""]
    return "\n".join(lines)


def summary_metrics(summary: dict) -> dict[str, float]:
    """The summary's numbers as MLflow metrics (`model_a_wins`, `model_b_bt_score`, ...)."""
    metrics = {"ratings": summary["ratings"], "ties": summary["ties"],
               "model_a_preferred_probability": summary["model_a_preferred_probability"]}
    if summary["tie_rate"] is not None:
        metrics["tie_rate"] = summary["tie_rate"]
    for m, s in summary["models"].items():
        for key in ("wins", "losses", "win_rate", "strict_win_rate", "bt_score", "bt_ci_low", "bt_ci_high"):
            if s[key] is not None:
                metrics[f"{m}_{key}"] = s[key]
    return metrics


def write_summary(session: RatingSession) -> dict:
    """Summarize the session and write `summary.json` and `summary.md` into its folder."""
    summary = summarize(session)
    storage.write_text(str(session.folder / SUMMARY_JSON), json.dumps(summary, indent=2, ensure_ascii=False))
    storage.write_text(str(session.folder / SUMMARY_MD), summary_markdown(summary))
    return summary


class RatingRun:
    """The session's MLflow run: created once, found again by its tag when the session continues."""

    def __init__(self, tracker: Tracker, session: RatingSession):
        self.tracker = tracker
        self.target: RunTarget | None = None
        if not tracker.enabled:
            return
        client = tracker.client()
        experiment = tracker.experiment_id()
        found = client.search_runs([experiment], f"tags.`{SESSION_TAG}` = '{session.name}'", max_results=1)
        if found:
            self.target = RunTarget(tracker.uri, found[0].info.run_id)
            client.update_run(self.target.run_id, status="RUNNING")
            return
        m = session.models
        self.target = tracker.start_run(
            f"rate {m['model_a'].label} vs {m['model_b'].label}",
            params={"model_a": m["model_a"].ref, "model_b": m["model_b"].ref, "prompts": len(session.prompts),
                    "bt_prior_virtual_ties": BT_PRIOR},
            tags={SESSION_TAG: session.name, "llmpipe.stage": "rate"})

    def publish(self, summary: dict) -> None:
        """Log the summary's metrics (step = ratings so far) and replace its artifacts. Observability only:
        a failure is logged, and the ratings file still holds every rating."""
        if self.target is None:
            return
        try:
            self.target.log_metrics(summary_metrics(summary), step=summary["ratings"])
            client = self.target.client()
            client.log_dict(self.target.run_id, summary, f"rating/{SUMMARY_JSON}")
            client.log_text(self.target.run_id, summary_markdown(summary), f"rating/{SUMMARY_MD}")
        except Exception as exc:
            log.warning("could not log the ratings to MLflow (they are in the session's ratings.jsonl): %s", exc)

    def finish(self) -> None:
        self.tracker.finish(self.target)
