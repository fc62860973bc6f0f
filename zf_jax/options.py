"""Configuration fields that carry their own help: one place for a field's name, type,
default and meaning.

The configuration dataclasses (`zf_jax.train.TrainConfig`,
`zf_jax.runs.config.RunConfig`) declare every field with `option(...)`;
`zf_jax.runs.config` turns those fields into absl flags, builds the
dataclass back from the parsed flags and writes / reads it as JSON. Nothing
here imports absl, so the math modules can declare options too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any


def option(default: Any, help: str, *,  # pylint: disable=redefined-builtin
           choices: Sequence[str] | None = None, flag: bool = True, off: Any = None,
           recipe: bool = True) -> Any:
  """A dataclass field with its help text (and allowed values) for the generated flag.

  Args:
    default: the field's default (the paper's value where the paper has one).
    help: one line for `--helpshort`, saying what the value means.
    choices: the allowed values of a string field (or of each item of a tuple
      of strings); other values are refused with a one-line error.
    flag: False for a field that is derived from others and takes no flag.
    off: the flag value that stands for None (e.g. --rms_radius=0: no
      renormalisation), for a field whose None a flag cannot spell.
    recipe: False for a field that does not change what a run computes (where
      files go, how often it logs or saves, how many devices share the work):
      a run resumed with another value is still the same run. Every other
      field is compared with the stored one before a run resumes
      (`zf_jax.runs.config.differences`).
  """
  return dataclasses.field(default=default, metadata={
      "help": help, "choices": tuple(choices) if choices else None, "flag": flag, "off": off,
      "recipe": recipe})


def numbers(name: str, values: Sequence[str], kind: type = int) -> tuple:
  """A list flag's values as numbers of `kind`; a one-line ValueError names the flag otherwise."""
  try:
    return tuple(kind(v) for v in values)
  except ValueError:
    what = {int: "integers", float: "numbers"}.get(kind, "values")
    raise ValueError(f"--{name} takes comma-separated {what}, got {','.join(values)}") from None


def check_choices(config: Any) -> None:
  """Raises a one-line ValueError for a field whose value is not among its `choices`.

  Tuple fields are checked item by item. Called by the configs' `__post_init__`.
  """
  for f in dataclasses.fields(config):
    allowed = f.metadata.get("choices")
    if not allowed:
      continue
    value = getattr(config, f.name)
    for item in value if isinstance(value, tuple) else (value,):
      if item not in allowed:
        raise ValueError(f"unknown {f.name} {item!r}; choose one of {', '.join(allowed)}")
