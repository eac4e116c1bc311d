"""Every ``neurodata`` subcommand describes itself, shows its defaults, and the fault keys are
documented where faults are set."""

from __future__ import annotations

import argparse

import pytest

from prefect_neurodata.cli import COMMAND_GROUPS, build_parser


def _subcommands(group: str) -> dict[str, argparse.ArgumentParser]:
    parser = build_parser([group])
    (groups,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    group_parser = groups.choices[group]
    actions = [a for a in group_parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert actions, f"{group} has no subcommands"
    return dict(actions[0].choices)


@pytest.mark.parametrize("group", sorted(COMMAND_GROUPS))
def test_every_subcommand_has_a_description_and_shows_defaults(group: str) -> None:
    for name, sub in _subcommands(group).items():
        assert sub.description and len(sub.description) > 20, f"{group} {name}"
        assert issubclass(sub.formatter_class, argparse.ArgumentDefaultsHelpFormatter), (
            f"{group} {name} does not show its defaults"
        )


def test_fault_keys_are_documented() -> None:
    commands = _subcommands("sandbox")
    for name in ("faults", "up"):
        text = commands[name].format_help()
        for key in ("rate", "statuses", "drop_rate", "latency_ms", "seed", "retry_after"):
            assert key in text, (name, key)


def test_status_mentions_the_processes_the_demo_adds() -> None:
    assert "adopted" in _subcommands("sandbox")["status"].description
