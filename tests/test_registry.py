"""pixel_jax.registry: register, look up, list, and clear errors."""

import pytest

from pixel_jax.registry import Registry


def test_register_returns_target_and_get_finds_it():
    registry = Registry("widget")

    @registry.register("double")
    def double(x):
        return 2 * x

    assert double(3) == 6  # the decorator leaves the function unchanged
    assert registry.get("double") is double
    assert "double" in registry and "triple" not in registry


def test_names_are_sorted():
    registry = Registry("widget")
    for name in ("zeta", "alpha", "mid"):
        registry.register(name)(object())
    assert registry.names() == ("alpha", "mid", "zeta")


def test_miss_lists_known_names():
    registry = Registry("advantage estimator")
    registry.register("grpo")(len)
    registry.register("dr_grpo")(len)
    message = r"unknown advantage estimator 'ppo'; known: 'dr_grpo', 'grpo'"
    with pytest.raises(ValueError, match=message):
        registry.get("ppo")


def test_miss_on_empty_registry_and_unhashable_name():
    registry = Registry("widget")
    with pytest.raises(ValueError, match="known: none"):
        registry.get("anything")
    with pytest.raises(ValueError, match=r"unknown widget \['a'\]"):
        registry.get(["a"])


def test_duplicate_and_bad_names_raise():
    registry = Registry("widget")
    registry.register("a")(1)
    with pytest.raises(ValueError, match="'a' is already registered"):
        registry.register("a")(2)
    assert registry.get("a") == 1
    with pytest.raises(ValueError, match="non-empty string"):
        registry.register("")
