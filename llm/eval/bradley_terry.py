"""Bradley–Terry scores from pairwise judgements, with Wald confidence intervals, and plain win rates.

A judgement compares two players: one wins, or it is a tie. Ties count as half a win for each side
(the "ties split" reading), so with strengths pi the model is P(i beats j) = pi_i / (pi_i + pi_j). Scores
are log-strengths centred on 0 (natural-log units: a difference of 1.1 is a 3:1 win ratio).

The fit is Hunter's (2004) minorize-maximize iteration, which increases the likelihood at every step and
converges wherever the maximum exists. The maximum is finite only when every player both beat and lost to
someone through a chain of comparisons; `prior` adds that many virtual ties between every pair of players
(a penalty that pulls scores toward each other), so one model winning the first three judgements still
gets a finite score. The interval is the Wald interval of the (penalized) likelihood: the covariance is the
pseudo-inverse of the Fisher information at the fit, whose null space is the common shift of all scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Two-sided 95% normal quantile.
Z95 = 1.959963984540054


@dataclass(frozen=True)
class WinRecord:
    """One player's judgements: wins, losses and ties, and the rates over all of them."""

    wins: int
    losses: int
    ties: int

    @property
    def judgements(self) -> int:
        return self.wins + self.losses + self.ties

    @property
    def win_rate(self) -> float:
        """Wins plus half the ties, over all judgements (0.5 is even); NaN before any judgement."""
        n = self.judgements
        return (self.wins + 0.5 * self.ties) / n if n else float("nan")

    @property
    def strict_win_rate(self) -> float:
        """Wins alone over all judgements (ties count as not won)."""
        n = self.judgements
        return self.wins / n if n else float("nan")

    @property
    def tie_rate(self) -> float:
        n = self.judgements
        return self.ties / n if n else float("nan")


@dataclass(frozen=True)
class BradleyTerryFit:
    """Fitted scores (log-strengths, mean 0) of `players`, their covariance, and the prior used."""

    players: list[str]
    scores: np.ndarray
    covariance: np.ndarray
    prior: float

    def stderr(self, i: int) -> float:
        return float(np.sqrt(max(self.covariance[i, i], 0.0)))

    def interval(self, i: int, z: float = Z95) -> tuple[float, float]:
        """The Wald interval of player i's score (95% by default)."""
        half = z * self.stderr(i)
        return float(self.scores[i] - half), float(self.scores[i] + half)

    def difference_interval(self, i: int, j: int, z: float = Z95) -> tuple[float, float]:
        """The Wald interval of score_i - score_j (what P(i beats j) depends on)."""
        d = float(self.scores[i] - self.scores[j])
        var = self.covariance[i, i] + self.covariance[j, j] - 2 * self.covariance[i, j]
        half = z * float(np.sqrt(max(var, 0.0)))
        return d - half, d + half

    def beats(self, i: int, j: int) -> float:
        """The fitted probability that player i beats player j."""
        return float(1.0 / (1.0 + np.exp(self.scores[j] - self.scores[i])))


def win_matrix(judgements: list[tuple[str, str, str | None]], players: list[str]) -> np.ndarray:
    """W[i, j]: how often players[i] beat players[j] among `judgements` (first, second, winner), a tie
    (winner None) adding half to both directions."""
    index = {p: k for k, p in enumerate(players)}
    wins = np.zeros((len(players), len(players)))
    for first, second, winner in judgements:
        i, j = index[first], index[second]
        if winner is None:
            wins[i, j] += 0.5
            wins[j, i] += 0.5
        elif winner == first:
            wins[i, j] += 1
        elif winner == second:
            wins[j, i] += 1
        else:
            raise ValueError(f"winner {winner!r} is neither {first!r} nor {second!r}")
    return wins


def fit_bradley_terry(wins: np.ndarray, players: list[str], prior: float = 1.0,
                      tol: float = 1e-12, max_iter: int = 100_000) -> BradleyTerryFit:
    """Maximize the Bradley–Terry likelihood of the win matrix `wins` (see `win_matrix`) plus `prior`
    virtual ties per pair; a `ValueError` when the maximum is not finite (prior 0 and a player who never
    won or never lost within its connected comparisons)."""
    wins = np.asarray(wins, dtype=float)
    n = wins.shape[0]
    if wins.shape != (n, n) or n != len(players) or n < 2:
        raise ValueError(f"need a square win matrix of at least 2 players, got {wins.shape} for {len(players)}")
    off_diagonal = 1.0 - np.eye(n)
    wins = wins * off_diagonal + 0.5 * prior * off_diagonal
    if prior <= 0 and not _strongly_connected(wins > 0):
        raise ValueError("no finite Bradley-Terry fit: some player never won (or never lost) against the rest; "
                         "use a prior > 0")
    games = wins + wins.T
    total_wins = wins.sum(axis=1)
    strength = np.ones(n)
    for _ in range(max_iter):
        pair = games / (strength[:, None] + strength[None, :])
        updated = total_wins / pair.sum(axis=1)
        updated /= np.exp(np.log(updated).mean())  # the likelihood ignores a common factor: fix it
        step = np.max(np.abs(np.log(updated) - np.log(strength)))
        strength = updated
        if step < tol:
            break
    scores = np.log(strength)
    scores -= scores.mean()
    return BradleyTerryFit(list(players), scores, _wald_covariance(scores, games), prior)


def _wald_covariance(scores: np.ndarray, games: np.ndarray) -> np.ndarray:
    """Pseudo-inverse of the Fisher information of the scores: I_ij = -n_ij p_ij p_ji off the diagonal,
    rows summing to zero (the null space, a common shift, is the one the mean-0 centring removes)."""
    p = 1.0 / (1.0 + np.exp(scores[None, :] - scores[:, None]))
    info = -games * p * p.T
    np.fill_diagonal(info, 0.0)
    np.fill_diagonal(info, -info.sum(axis=1))
    return np.linalg.pinv(info)


def _strongly_connected(edges: np.ndarray) -> bool:
    """Whether every node reaches every other along `edges[i, j]` (i beat j at least once)."""
    reach = edges | np.eye(len(edges), dtype=bool)
    for _ in range(len(edges)):
        reach = reach | ((reach.astype(int) @ reach.astype(int)) > 0)
    return bool(reach.all())
