"""The typed contract between the runner and the engine
(``wallaroo.contract``): every declared key is read by the engine, and a key
missing, misspelt or of the wrong type fails the start naming it."""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import pytest
import wallaroo
from wallaroo import _engine, contract
from wallaroo.api05 import GenSourceConfig
from wallaroo.kafka import KafkaSetup
from wallaroo.plan import compile_plan
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


# --- sources, sinks and steps: a TypedDict per kind ---------------------------

_DECODE: contract.Decoder = {"decode": bytes.decode}
_FRAMED: contract.FramedDecoder = {
    "decode": bytes.decode,
    "header_length": 4,
    "payload_length": len,
    "length_fmt": ">I",
}
_KAFKA: contract.KafkaClient = {"bootstrap": "127.0.0.1:9", "log_level": "Warn", "config": []}
_ENCODE = {"encode": str, "group": None}

#: A complete example of every kind, and what the engine's messages call it.
SOURCES: list[tuple[type, dict, str]] = [
    (contract.TcpSource,
     {"kind": "tcp", "host": "127.0.0.1", "port": 0, "max_connections": None, **_FRAMED},
     "the tcp source"),
    (contract.FileSource,
     {"kind": "file", "path": "in.txt", "framing": "lines", **_DECODE}, "the file source"),
    (contract.FramedFileSource,
     {"kind": "file", "path": "in.bin", "framing": "length", **_FRAMED}, "the file source"),
    (contract.GenSource, {"kind": "gen", "generator": object(), **_DECODE}, "the gen source"),
    (contract.KafkaSource,
     {"kind": "kafka", "topic": "t", "group_id": "g", "start_offset": "earliest",
      "create_partitions": None, **_KAFKA, **_DECODE},
     "the kafka source"),
]  # fmt: skip
SINKS: list[tuple[type, dict, str]] = [
    (contract.TcpSink,
     {"kind": "tcp", "host": "127.0.0.1", "port": 9, **_ENCODE}, "the sink (tcp)"),
    (contract.FileSink, {"kind": "file", "path": "out.txt", **_ENCODE}, "the sink (file)"),
    (contract.StdoutSink, {"kind": "stdout", **_ENCODE}, "the sink (stdout)"),
    (contract.KafkaSink,
     {"kind": "kafka", "topic": "t", "max_produce_buffer_ms": 5, "max_message_size": 100,
      "create_partitions": None, "transactions": False, **_KAFKA, **_ENCODE},
     "the sink (kafka)"),
    (contract.ManySink,
     {"kind": "many", "sinks": [{"kind": "stdout", **_ENCODE}], **_ENCODE}, "the sink (many)"),
]  # fmt: skip
STEPS: list[tuple[type, dict, str]] = [
    (contract.Step, {"kind": "map", "name": "double", "func": str}, "step 1 \"double\" (map)"),
    (contract.StateStep,
     {"kind": "state", "name": "count", "func": str, "state_name": "s", "partition": None,
      "keys": [], "u64": False, "tick": None, "share": None, "origin": False},
     "step 1 \"count\" (state)"),
]  # fmt: skip
PARTS = [("source", *c) for c in SOURCES] + [("sink", *c) for c in SINKS]
PARTS += [("step", *c) for c in STEPS]


def _pipeline_plan(part: str, value: dict) -> dict:
    """A plan of one pipeline ``p`` with ``value`` as its source, sink or only step."""
    pipeline = contract.pipeline_plan(
        "p",
        value if part == "source" else SOURCES[1][1],  # type: ignore[arg-type]
        [value] if part == "step" else [],  # type: ignore[list-item]
        value if part == "sink" else None,  # type: ignore[arg-type]
    )
    return dict(contract.app_plan("contract", [pipeline], {}))


@pytest.mark.parametrize(("part", "declared", "example", "name"), PARTS)
def test_the_examples_hold_every_declared_key(
    part: str, declared: type, example: dict, name: str
) -> None:
    assert set(example) == declared.__required_keys__  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("part", "key", "example", "name"),
    [
        (part, key, example, name)
        for part, declared, example, name in PARTS
        for key in sorted(declared.__required_keys__)  # type: ignore[attr-defined]
    ],
)
def test_a_misspelt_key_of_a_source_sink_or_step_is_named_with_it(
    part: str, key: str, example: dict, name: str
) -> None:
    value = dict(example)
    value[key + "_misspelt"] = value.pop(key)
    message = _refusal(dict(_options()), _pipeline_plan(part, value))
    assert message.startswith("the plan:"), message
    assert 'pipeline "p"' in message, message
    if part == "step" and key in ("kind", "name", "func"):
        name = "step 1"
    elif key == "kind":
        name = f"the {part}"
    assert f"{name}: missing key '{key}'" in message, message


def test_a_misspelt_key_of_one_of_many_sinks_is_named() -> None:
    _, many, _ = SINKS[-1]
    sink = {"kind": "file", "pathname": "out.txt", **_ENCODE}
    message = _refusal(dict(_options()), _pipeline_plan("sink", {**many, "sinks": [sink]}))
    assert "the sink (many), sink 1 (file): missing key 'path'" in message, message


@pytest.mark.parametrize(
    ("part", "value", "expected"),
    [
        ("source", {**SOURCES[1][1], "kind": "ftp"}, 'unknown source kind "ftp"' ),
        ("sink", {**SINKS[0][1], "kind": "ftp"}, 'unknown sink kind "ftp"' ),
        ("step", {**STEPS[0][1], "kind": "fold"}, 'unknown step kind "fold"' ),
        ("source", {**SOURCES[1][1], "framing": "words"},
         "the file source: failed to extract field FileSource.framing: "
         "framing must be 'lines' or 'length', got \"words\""),
        ("source", {**SOURCES[4][1], "start_offset": "newest"},
         "start_offset must be 'committed', 'earliest' or 'latest', got \"newest\""),
        ("sink", {**SINKS[0][1], "port": 70000}, "port out of range: 70000"),
        ("step", {**STEPS[1][1], "u64": "no"}, "StateStep.u64_keys"),
    ],
)  # fmt: skip
def test_a_value_a_source_sink_or_step_cannot_have_is_named(
    part: str, value: dict, expected: str
) -> None:
    message = _refusal(dict(_options()), _pipeline_plan(part, value))
    assert expected in message, message


@wallaroo.decoder(header_length=4, length_fmt=">I")
def _framed(data: bytes) -> str:
    return data.decode()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def _lines(data: bytes) -> str:
    return data.decode()


@wallaroo.encoder
def _encode(data: Any) -> str:
    return f"{data}\n"


@wallaroo.computation(name="shout")
def _shout(data: str) -> str:
    return data.upper()


@wallaroo.computation_multi(name="split")
def _split(data: str) -> list:
    return data.split()


class _Count:
    def __init__(self) -> None:
        self.n = 0


@wallaroo.state_computation(name="count")
def _count(data: str, state: _Count) -> tuple:
    state.n += 1
    return state.n, True


@wallaroo.state_computation_multi(name="count many")
def _count_many(data: str, state: _Count) -> tuple:
    return [data], False


@wallaroo.partition
def _first(data: str) -> str:
    return data[:1]


def _apps() -> list:
    """A 0.4.2 application with a pipeline per kind of source and every kind
    of step, and a 0.5 one with what 0.4.2 did not have (gen, to_sinks)."""
    app = wallaroo.ApplicationBuilder("kinds")
    app.new_pipeline("tcp", wallaroo.TCPSourceConfig("127.0.0.1", 0, _framed))
    app.to(_shout).to_parallel(_split).to_stateful(_count, _Count, "one")
    app.to_state_partition(_count_many, _Count, "by letter", _first, ["a"])
    app.to_sink(wallaroo.TCPSinkConfig("127.0.0.1", 9, _encode))
    app.new_pipeline("lines", wallaroo.FileSourceConfig("in.txt", _lines))
    app.to_sink(wallaroo.FileSinkConfig("out.txt", _encode))
    app.new_pipeline("framed", wallaroo.FileSourceConfig("in.bin", _framed, framing="length"))
    app.to_sink(wallaroo.StdoutSinkConfig(_encode))
    app.new_pipeline("kafka", wallaroo.KafkaSourceConfig("in", [("h", 9)], "Warn", _lines))
    app.to_sink(wallaroo.KafkaSinkConfig("out", [("h", 9)], "Warn", 5, 1000, _encode))
    app05 = wallaroo.ApplicationBuilder("kinds 0.5")
    app05.new_pipeline("gen", GenSourceConfig(_Generator()))
    app05.to_sinks([wallaroo.StdoutSinkConfig(_encode), wallaroo.FileSinkConfig("o", _encode)])
    return [app.build(), app05.build()]


class _Generator:
    def initial_value(self) -> int:
        return 0

    def apply(self, value: int) -> int:
        return value + 1


def _declared(part: str, value: dict) -> type:
    """The TypedDict of a compiled source, sink or step."""
    if part == "step":
        return contract.StateStep if value["kind"].startswith("state") else contract.Step
    (declared,) = [
        declared
        for declared, example, _name in (SOURCES if part == "source" else SINKS)
        if (example["kind"], example.get("framing")) == (value["kind"], value.get("framing"))
    ]
    return declared


def test_the_compiled_plans_hold_what_the_contract_declares() -> None:
    opts, _unknown = _parser().parse_known_args([])
    seen = set()
    for app in _apps():
        plan = compile_plan(app, "kinds.py")
        KafkaSetup(opts).prepare(plan)
        for pipeline in plan["pipelines"]:
            sink = pipeline["sink"]
            parts = [("source", pipeline["source"]), ("sink", sink)]
            parts += [("sink", one) for one in sink.get("sinks", [])]
            parts += [("step", step) for step in pipeline["steps"]]
            for part, value in parts:
                declared = _declared(part, value)
                assert set(value) == declared.__required_keys__, (part, value)  # type: ignore[attr-defined]
                seen.add(declared)
    assert seen == {declared for _part, declared, _example, _name in PARTS}
