"""Flags shared by several subcommands, and the DRIFTLINE_* environment defaults."""

from __future__ import annotations

import argparse
import os

from driftline import config
from driftline.commands._env import parse_bool
from driftline.commands._kafka import add_kafka_client
from driftline.core.spec import (
    FeatureSpec,
    SpecError,
    load_default_spec,
    load_spec,
    parse_duration_ms,
)

#: Namespace attribute holding a ``DRIFTLINE_*`` value that did not parse (see :func:`env_error`).
ENV_ERROR = "_env_error"


def env_error(args: argparse.Namespace) -> str | None:
    """The one-line error of a ``DRIFTLINE_*`` value of the command that runs, if any."""
    return getattr(args, ENV_ERROR, None)


def apply_env_defaults(parser: argparse.ArgumentParser) -> None:
    """Let ``DRIFTLINE_<DEST>`` override each option's default, in every subparser.

    The environment value is parsed by the option's own ``type`` (booleans strictly, see
    :func:`driftline.commands._env.parse_bool`); a value that does not parse is a usage
    error naming the variable (exit 2, :func:`env_error`), never a silent default.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                apply_env_defaults(subparser)
            continue
        if not action.option_strings or action.dest in ("help", argparse.SUPPRESS):
            continue
        name = f"DRIFTLINE_{action.dest.upper()}"
        raw = os.environ.get(name)
        if raw is None:
            continue
        try:
            action.default = _env_value(action, raw)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
            # Reported only if this (sub)command runs (``env_error``): one variable may
            # serve two commands, and another command's flag is not this one's business.
            parser.set_defaults(
                **{ENV_ERROR: f"{parser.prog}: environment variable {name}: {error}"}
            )
            continue
        action.required = False
        if action.help and "(env " not in action.help:
            action.help += f" (env DRIFTLINE_{action.dest.upper()})"


def _env_value(action: argparse.Action, raw: str) -> object:
    """``raw`` parsed for ``action`` as the command line would parse it."""
    if isinstance(
        action,
        argparse._StoreTrueAction | argparse._StoreFalseAction | argparse.BooleanOptionalAction,
    ):
        return parse_bool(raw)
    listed = action.nargs in ("*", "+") or isinstance(action, argparse._AppendAction)
    parse = action.type if callable(action.type) else None
    values = [parse(v) if parse else v for v in (raw.split(",") if listed else [raw])]
    if action.choices is not None and any(v not in action.choices for v in values):
        raise ValueError(f"{raw!r} is not one of {', '.join(map(str, action.choices))}")
    return values if listed else values[0]


def add_bootstrap(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bootstrap-servers",
        default=config.DEFAULT_BOOTSTRAP,
        help="Kafka bootstrap servers, host:port[,host:port] (default: %(default)s)",
    )
    add_kafka_client(parser)


def add_topics(parser: argparse.ArgumentParser, *, output: bool = True) -> None:
    parser.add_argument(
        "--input-topic",
        default=config.INPUT_TOPIC,
        help="customer events topic (default: %(default)s)",
    )
    if output:
        parser.add_argument(
            "--output-topic",
            default=config.OUTPUT_TOPIC,
            help="predictions topic (default: %(default)s)",
        )
        parser.add_argument(
            "--dead-letter-topic",
            default=config.DEAD_LETTER_TOPIC,
            help="dead-letter topic for rejected events (default: %(default)s)",
        )


def add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry",
        default=config.DEFAULT_REGISTRY,
        help="model registry directory (default: %(default)s)",
    )
    parser.add_argument(
        "--model-name", default=config.DEFAULT_MODEL_NAME, help="model name (default: %(default)s)"
    )
    parser.add_argument(
        "--model-version",
        default="champion",
        help="model version to serve: 'champion' (the registry's recorded champion, or its "
        "latest version while none is recorded), 'latest', or a version like v0003 "
        "(default: %(default)s)",
    )


def add_spec(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--features",
        default=None,
        help="feature spec TOML file (default: the spec shipped with Driftline)",
    )


def load_spec_arg(args: argparse.Namespace) -> FeatureSpec:
    """The spec named by ``--features``, or the one shipped with Driftline."""
    return load_spec(args.features) if args.features else load_default_spec()


def duration_ms(text: str) -> int:
    """An argparse type: '90s', '15m', '1h', '7d', '2w' (or bare milliseconds) -> ms."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        return parse_duration_ms(text)
    except SpecError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
