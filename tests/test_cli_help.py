"""Every command's --help reads as plain text, describes the command and names its defaults."""

from __future__ import annotations

import argparse
from typing import Iterator, Tuple

import pytest

from obs.cli import build_parser


def commands(
    parser: argparse.ArgumentParser, name: str = "torchserve-obs"
) -> Iterator[Tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from commands(sub, f"{name} {sub_name}")


COMMANDS = dict(commands(build_parser()))


def test_every_command_is_reached() -> None:
    assert {"torchserve-obs demo", "torchserve-obs stack up", "torchserve-obs generate"} <= set(
        COMMANDS
    )


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_describes_the_command_and_its_defaults(name: str) -> None:
    parser = COMMANDS[name]
    text = parser.format_help()
    assert "``" not in text, f"{name} --help shows reStructuredText markup"
    leaf = not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
    if leaf:
        assert parser.description, f"{name} --help has no description"
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        assert action.help, f"{name} {action.option_strings[0]} has no help"
        if action.default not in (None, False, argparse.SUPPRESS) and not action.required:
            assert "default" in action.help, f"{name} {action.option_strings[0]}: default unsaid"
