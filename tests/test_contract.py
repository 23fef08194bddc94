"""The typed contract between the runner and the engine
(``wallaroo.contract``): every declared key is read by the engine, and a key
missing, misspelt or of the wrong type fails the start naming it."""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import pytest
from wallaroo import _engine, contract
from wallaroo.runner import _parser

EMPTY_PLAN = contract.app_plan("contract", [], {})


def _options(*flags: str, membership: Any | None = None) -> contract.RunOptions:
    """The options the runner hands the engine for these command-line flags."""
    opts, _unknown = _parser().parse_known_args(list(flags))
    return contract.run_options(opts, EMPTY_PLAN, membership)


def _refusal(options: dict, plan: dict = EMPTY_PLAN) -> str:  # type: ignore[assignment]
    with pytest.raises(_engine.ConfigError) as refused:
        _engine.run(plan, options)  # type: ignore[arg-type]
    return str(refused.value)


@pytest.mark.parametrize("key", sorted(contract.Plan.__required_keys__))
def test_a_misspelt_plan_key_fails_the_start_with_its_name(key: str) -> None:
    plan = dict(EMPTY_PLAN)
    plan[key + "_misspelt"] = plan.pop(key)  # type: ignore[literal-required]
    message = _refusal(dict(_options()), plan)
    assert message.startswith("the plan:"), message
    assert f"missing key '{key}'" in message, message


@pytest.mark.parametrize("key", sorted(contract.PipelinePlan.__required_keys__))
def test_a_misspelt_pipeline_key_is_named(key: str) -> None:
    pipeline = contract.pipeline_plan("p", {"kind": "gen", "generator": 1, "decode": str}, [], None)
    pipeline[key + "_misspelt"] = pipeline.pop(key)  # type: ignore[literal-required]
    plan = contract.app_plan("contract", [pipeline], {})
    message = _refusal(dict(_options()), dict(plan))
    assert f"missing key '{key}'" in message, message


def test_run_options_hold_every_declared_key() -> None:
    member = SimpleNamespace(index=1, addresses=["a:1", "b:2"], names=["w0", "w1"], token=7)
    options = _options("-r", "/tmp/snapshots", "--snapshot-interval", "0.5", membership=member)
    assert set(options) == contract.RunOptions.__required_keys__
    assert options["resilience"] is not None and options["cluster"] is not None
    assert set(options["resilience"]) == contract.ResilienceOptions.__required_keys__
    assert set(options["cluster"]) == contract.Membership.__required_keys__
    assert options["resilience"]["interval_ms"] == 500
    # The store of a cluster worker is named after the worker.
    assert options["resilience"]["worker"] == "w1"
    alone = _options()
    assert alone["resilience"] is None and alone["cluster"] is None


@pytest.mark.parametrize("key", sorted(contract.RunOptions.__required_keys__))
def test_a_misspelt_run_option_fails_the_start_with_its_name(key: str) -> None:
    options: dict = dict(_options())
    options[key + "_misspelt"] = options.pop(key)
    message = _refusal(options)
    assert f"missing key '{key}'" in message, message


@pytest.mark.parametrize(
    ("group", "key"),
    [("resilience", k) for k in sorted(contract.ResilienceOptions.__required_keys__)]
    + [("cluster", k) for k in sorted(contract.Membership.__required_keys__)],
)
def test_a_missing_key_of_a_nested_option_is_named(group: str, key: str) -> None:
    member = SimpleNamespace(index=0, addresses=["a:1"], names=["w0"], token=7)
    options: dict = copy.deepcopy(dict(_options("-r", "/tmp/snapshots", membership=member)))
    del options[group][key]
    message = _refusal(options)
    assert f"Options.{group}: missing key '{key}'" in message, message


def test_a_value_of_the_wrong_type_is_named() -> None:
    options: dict = dict(_options())
    options["epoch_ms"] = "100"
    assert "Options.epoch_ms" in _refusal(options)
    options = dict(_options())
    options["on_error"] = "ignore"
    assert "on_error must be 'stop' or 'skip'" in _refusal(options)
