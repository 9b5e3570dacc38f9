"""Bradley-Terry fit: the two-player closed form, a three-player fit against a direct numeric maximization,
the Fisher interval's variance and coverage, the prior, and win rates with ties."""

import math

import numpy as np
import pytest

from llm.eval.bradley_terry import WinRecord, fit_bradley_terry, win_matrix


def test_two_players_match_the_closed_form_with_ties_split():
    # 7 wins, 3 losses, 2 ties: the MLE is P(a beats b) = (7 + 1) / 12 and score_a - score_b its log-odds.
    judgements = [("a", "b", "a")] * 7 + [("a", "b", "b")] * 3 + [("b", "a", None)] * 2
    fit = fit_bradley_terry(win_matrix(judgements, ["a", "b"]), ["a", "b"], prior=0)
    p = 8 / 12
    assert fit.beats(0, 1) == pytest.approx(p, abs=1e-9)
    assert fit.scores[0] - fit.scores[1] == pytest.approx(math.log(p / (1 - p)), abs=1e-9)
    assert fit.scores.sum() == pytest.approx(0, abs=1e-12)
    # The Fisher information of the log-odds from 12 comparisons is 12 p (1 - p).
    low, high = fit.difference_interval(0, 1)
    assert (high - low) / 2 == pytest.approx(1.959963984540054 / math.sqrt(12 * p * (1 - p)), rel=1e-6)
    assert fit.interval(0)[0] < fit.scores[0] < fit.interval(0)[1]


def test_three_players_match_a_direct_maximization_of_the_likelihood():
    from scipy.optimize import minimize

    wins = np.array([[0, 6, 9], [4, 0, 7.5], [2, 2.5, 0]])  # .5: ties split

    def negative_log_likelihood(free):
        theta = np.array([0.0, *free])
        diff = theta[:, None] - theta[None, :]
        return float((wins * np.logaddexp(0, -diff)).sum())

    best = minimize(negative_log_likelihood, np.zeros(2), method="BFGS", options={"gtol": 1e-10})
    expected = np.array([0.0, *best.x])
    expected -= expected.mean()
    fit = fit_bradley_terry(wins, ["x", "y", "z"], prior=0)
    np.testing.assert_allclose(fit.scores, expected, atol=1e-5)
    assert list(np.argsort(-fit.scores)) == [0, 1, 2]
    # The interval's covariance is the inverse Hessian of the same likelihood, in the free coordinates
    # theta_k - theta_x (Hessian by central differences).
    h, eye = 1e-4, np.eye(2)
    hessian = np.array([[(negative_log_likelihood(best.x + h * (eye[a] + eye[b]))
                          - negative_log_likelihood(best.x + h * (eye[a] - eye[b]))
                          - negative_log_likelihood(best.x - h * (eye[a] - eye[b]))
                          + negative_log_likelihood(best.x - h * (eye[a] + eye[b]))) / (4 * h * h)
                         for b in range(2)] for a in range(2)])
    c = fit.covariance
    free_covariance = c[1:, 1:] - c[0, 1:][None, :] - c[1:, 0][:, None] + c[0, 0]
    np.testing.assert_allclose(free_covariance, np.linalg.inv(hessian), rtol=1e-4)


def test_an_unbeaten_player_needs_the_prior_and_gets_a_finite_score_with_it():
    wins = win_matrix([("a", "b", "a")] * 3, ["a", "b"])
    with pytest.raises(ValueError, match="prior"):
        fit_bradley_terry(wins, ["a", "b"], prior=0)
    fit = fit_bradley_terry(wins, ["a", "b"], prior=1)
    # One virtual tie: 3.5 wins of 4 comparisons.
    assert fit.beats(0, 1) == pytest.approx(3.5 / 4, abs=1e-9)
    assert np.isfinite(fit.covariance).all()


def test_the_95_percent_interval_covers_the_true_scores_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    truth = np.array([0.6, 0.0, -0.6])
    covered, trials = np.zeros(3), 400
    for _ in range(trials):
        wins = np.zeros((3, 3))
        for i in range(3):
            for j in range(i + 1, 3):
                won = rng.binomial(40, 1 / (1 + math.exp(truth[j] - truth[i])))
                wins[i, j], wins[j, i] = won, 40 - won
        fit = fit_bradley_terry(wins, ["a", "b", "c"], prior=0)
        covered += [fit.interval(k)[0] <= truth[k] <= fit.interval(k)[1] for k in range(3)]
    coverage = covered / trials
    assert ((coverage > 0.91) & (coverage < 0.985)).all(), coverage


def test_win_rates_count_ties_as_half_and_separately():
    record = WinRecord(wins=5, losses=3, ties=2)
    assert record.judgements == 10
    assert record.win_rate == pytest.approx(0.6)
    assert record.strict_win_rate == pytest.approx(0.5)
    assert record.tie_rate == pytest.approx(0.2)
    assert math.isnan(WinRecord(0, 0, 0).win_rate)


def test_a_winner_outside_the_pair_is_refused():
    with pytest.raises(ValueError, match="neither"):
        win_matrix([("a", "b", "c")], ["a", "b", "c"])
