"""SecretBudget: a burst at once, then the refill rate; matching secrets give tokens back."""

from __future__ import annotations

import pytest

from gateway.secret_budget import SecretBudget


def test_a_burst_then_the_refill_rate_per_name() -> None:
    budget = SecretBudget(rate=2.0, burst=3, size=100)
    assert [budget.take("k", 0.0) for _ in range(4)] == [True, True, True, False]
    assert budget.take("other", 0.0)  # names are independent
    assert budget.wait_s("k", 0.0) == pytest.approx(0.5)
    assert not budget.take("k", 0.4)
    assert budget.take("k", 0.5) and not budget.take("k", 0.5)
    # Over any t seconds, at most burst + rate * t tokens.
    taken = sum(budget.take("k", 0.5 + i * 0.01) for i in range(1000))
    assert taken <= 2.0 * 10.0 + 1


def test_a_matching_secret_gives_its_token_back() -> None:
    budget = SecretBudget(rate=1.0, burst=2, size=100)
    for _ in range(50):
        assert budget.take("a", 0.0)
        budget.give_back("a", 0.0)
    assert budget.take("a", 0.0) and budget.take("a", 0.0) and not budget.take("a", 0.0)
    budget.give_back("a", 0.0)
    assert budget.take("a", 0.0)


def test_a_budget_needs_a_positive_rate_and_burst() -> None:
    with pytest.raises(ValueError):
        SecretBudget(rate=0, burst=1, size=1)
