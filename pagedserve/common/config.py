"""Service configuration: one dataclass per service, mapped one to one onto flags and env vars.

A field `max_num_seqs: int = 256` becomes the flag `--max-num-seqs` and the
environment variable `PAGEDSERVE_MAX_NUM_SEQS` (the flag wins), or the file named by
`PAGEDSERVE_MAX_NUM_SEQS_FILE` (container secrets). Help text comes
from `field(metadata={"help": ...})`. Each dataclass validates itself in
`validate()`, raising ConfigError with the flag's name.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import types
import typing
from typing import TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting is invalid; the message names the flag."""


def option(default, help: str):  # noqa: A002 - mirrors argparse's name
    """A config field with its help text."""
    return dataclasses.field(default=default, metadata={"help": help})


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _base_type(annotation) -> type:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    return annotation


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def env_setting(name: str, default=None, environ=os.environ):
    """The value of environment variable `name`, or else the contents of the file that
    `name_FILE` names (how container secrets arrive), or else default."""
    if name in environ:
        return environ[name]
    secret_file = environ.get(name + "_FILE")
    if secret_file:
        with open(secret_file) as handle:
            return handle.read().strip()
    return default


def parse_config(cls: type[T], argv: list[str] | None, prog: str, description: str) -> T:
    """Builds cls from argv and PAGEDSERVE_* variables, then validates it."""
    hints = typing.get_type_hints(cls)
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for field in dataclasses.fields(cls):
        kind = _base_type(hints[field.name])
        env_name = "PAGEDSERVE_" + field.name.upper()
        default = env_setting(env_name, field.default)
        if kind is bool:
            default = _parse_bool(default) if isinstance(default, str) else default
            converter = _parse_bool
        else:
            converter = kind
        parser.add_argument(
            flag_name(field.name),
            dest=field.name,
            type=converter,
            default=default,
            help=f"{field.metadata.get('help', '')} (env {env_name}; default {field.default!r})",
        )
    namespace = parser.parse_args(argv)
    values = {}
    for field in dataclasses.fields(cls):
        value = getattr(namespace, field.name)
        kind = _base_type(hints[field.name])
        if isinstance(value, str) and kind is not str and value is not None:
            value = kind(value)  # an environment variable's text
        values[field.name] = value
    config = cls(**values)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def log_config(logger: logging.Logger, config) -> None:
    """Prints every setting at start, one line."""
    settings = ", ".join(
        f"{f.name}={_shown(f.name, getattr(config, f.name))!r}" for f in dataclasses.fields(config)
    )
    logger.info("config: %s", settings)


def _shown(field_name: str, value):
    """Secrets (fields named *_token) are logged as set or not, never their value."""
    if field_name.endswith("_token") and value:
        return "<set>"
    return value


def require(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{flag_name(field_name)}: {message}")
