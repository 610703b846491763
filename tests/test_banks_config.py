"""`banks:` and `rotation:` in the config: the issue's shape, and errors naming key, value, expectation."""

from __future__ import annotations

from typing import Any

import pytest

from supplier.bank_reload import plan_banks
from supplier.config import BankConfig, ConfigError, parse_config

HUBS = [{"name": "alpha", "key": "k" * 16, "push_url": "http://127.0.0.1:1/"}]


def bank(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "pool1",
        "control": "/dev/serial/by-path/pci-0000:00:14.0-usb-0:3:1.0-port0",
        "switch": "AT+SWIT{module:02d}-{slot:04d}",
        "reset_after_switch": True,
        "slots": 32,
        "modules": {1: "/dev/serial/by-path/a-port0", 2: "/dev/serial/by-path/a-port1"},
    }
    base.update(changes)
    return base


def test_the_issue_shape_parses() -> None:
    config = parse_config(
        {"hubs": HUBS, "banks": [bank()], "rotation": {"dwell": "30m", "settle": "120s"}}
    )
    (pool,) = config.banks
    assert pool.name == "pool1"
    assert pool.slots == 32
    assert pool.modules == {1: "/dev/serial/by-path/a-port0", 2: "/dev/serial/by-path/a-port1"}
    assert pool.reset_after_switch is True
    assert config.rotation.dwell == 1800.0
    assert config.rotation.settle == 120.0


def test_defaults_and_string_module_keys() -> None:
    raw = bank(modules={"3": "/dev/ttyUSB3"})
    del raw["switch"], raw["reset_after_switch"]
    config = parse_config({"hubs": HUBS, "banks": [raw]})
    assert config.banks[0].switch == "AT+SWIT{module:02d}-{slot:04d}"
    assert config.banks[0].modules == {3: "/dev/ttyUSB3"}
    assert parse_config({"hubs": HUBS}).banks == ()


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"slots": 0}, r"banks\[0\]\.slots: 0: input should be greater than or equal to 1"),
        (
            {"modules": {0: "/dev/ttyUSB0"}},
            r"banks\[0\]\.modules: .*expected module numbers 1-99 as keys, got 0",
        ),
        ({"modules": {100: "/dev/ttyUSB0"}}, r"got 100"),
        ({"modules": {"x": "/dev/ttyUSB0"}}, r"banks\[0\]\.modules\.x"),
        ({"switch": "AT+SWIT{slot:04d}"}, r"banks\[0\]: .*expected a template with \{module\}"),
        ({"switch": "AT+SWIT01-0001"}, r"\{module\} and \{slot\}"),
        ({"switch": "AT+SWIT{module:02d}-{slot:04d}{x}"}, r"not a usable template"),
        (
            {"control": "ttyUSB9"},
            r"banks\[0\]\.control: 'ttyUSB9': expected the control port's absolute path",
        ),
        (
            {"modules": {1: "/dev/a", 2: "/dev/a"}},
            r"port /dev/a is listed twice \(pool1 module 1 and pool1 module 2\)",
        ),
        (
            {"control": "/dev/serial/by-path/a-port0"},
            r"listed twice \(pool1 control and pool1 module 1\)",
        ),
        ({"modules": {1: "/dev/serial/by-path/*"}}, r"expected one port's absolute path"),
    ],
)
def test_bad_banks_name_key_value_expectation(changes: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        parse_config({"hubs": HUBS, "banks": [bank(**changes)]})


def test_a_port_in_two_banks() -> None:
    other = bank(name="pool2", control="/dev/ctl2", modules={1: "/dev/serial/by-path/a-port1"})
    with pytest.raises(ConfigError, match=r"listed twice \(pool1 module 2 and pool2 module 1\)"):
        parse_config({"hubs": HUBS, "banks": [bank(), other]})


def test_module_switching_itself_needs_only_the_slot() -> None:
    config = parse_config(
        {"hubs": HUBS, "banks": [bank(control=None, switch="AT+QDSIM={index}", slots=2)]}
    )
    assert config.banks[0].control is None
    with pytest.raises(ConfigError, match=r"expected a template with \{slot\}"):
        parse_config({"hubs": HUBS, "banks": [bank(control=None, switch="AT+QDSIM=1")]})


def test_rotation_durations_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"rotation\.dwell: 'soon': expected a duration"):
        parse_config({"hubs": HUBS, "rotation": {"dwell": "soon"}})


def banks_of(*banks: dict[str, Any]) -> tuple[BankConfig, ...]:
    return parse_config({"hubs": HUBS, "banks": list(banks)}).banks


def test_a_reload_matches_banks_by_name_or_by_their_ports() -> None:
    other = bank(name="pool2", control="/dev/c2", modules={1: "/dev/m2"})
    running = banks_of(bank(), other)
    # Renamed (same ports, old name gone) and fewer slots: applied.
    plan = plan_banks(running, banks_of(bank(name="left", slots=8), other))
    assert plan.renamed == {"pool1": "left"}
    assert [(b.name, b.slots) for b in plan.banks] == [("left", 8), ("pool2", 32)]
    assert [(c.key, c.value, c.running) for c in plan.applied] == [
        ("banks[0].name", "left", "pool1"),
        ("banks[0].slots", 8, 32),
    ]
    assert plan.restart == ()
    # Renamed *and* moved: neither the name nor the ports say which bank it is.
    plan = plan_banks(running, banks_of(bank(name="left", control="/dev/c9"), other))
    assert plan.renamed == {} and plan.applied == ()
    assert [(c.key, c.value) for c in plan.restart] == [
        ("banks[0]", "bank left (new)"),
        ("banks", "bank pool1 not listed"),
    ]
    assert [b.name for b in plan.banks] == ["pool2", "pool1"]  # both go on as they run
    # Same name, a control port moved: the whole bank waits for the restart.
    plan = plan_banks(running, banks_of(bank(control="/dev/c9", slots=4), other))
    assert [(c.key, c.value, c.running) for c in plan.restart] == [
        ("banks[0].control", "/dev/c9", running[0].control)
    ]
    assert plan.banks == running and plan.applied == ()
