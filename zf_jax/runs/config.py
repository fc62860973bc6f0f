"""A training run's configuration, from one source: the dataclasses' fields.

`RunConfig` (what to train, on what, how long; Section 3's protocol) holds
a `zf_jax.train.TrainConfig` (the recipe). Every field is declared once with
`zf_jax.options.option` (default, help, allowed values), and from there:

  define_flags()        one absl flag per field (nested configs flattened:
                        --learning_rate, not --train.learning_rate)
  from_flags()          the RunConfig the parsed flags describe
  to_json / from_json   config.json in a run's workdir (same field names)
  resolve(cfg)          the config against its dataset: the schedule in steps and
                        the facts config.json keeps beside it
  differences           whether a stored run is the run asked for (recipe fields)

So a binary that trains gets every training flag, with the same help, by
calling `define_flags()`; flagfiles (`--flagfile=zfnet.flags`) list only what
differs from the defaults, which are the paper's values.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from absl import flags

from zf_jax import arch as arch_lib
from zf_jax.data import input_pipeline
from zf_jax.options import check_choices, numbers, option
from zf_jax.train import TrainConfig

FIG4_EPOCHS = (1, 2, 5, 10, 20, 30, 40, 64)

# The flags define_flags() defines belong to the binary that calls it: they are
# its key flags, listed by its --helpshort.
flags.disclaim_key_flags()


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """One training run (Section 3). `train` holds the recipe; the rest says what and how long."""
  arch: str = option("zfnet", "Architecture preset (zf_jax.arch).", choices=arch_lib.names())
  remove: tuple[int, ...] = option(
      (), "Table 3: remove these layers of --arch (any of conv 3, 4, 5 and fc 6, 7).")
  fc_features: int | None = option(
      None, "Table 3: units of the hidden fc layers 6 and 7 (default: --arch's).", off=0)
  conv_features: tuple[int, ...] = option(
      (), "Table 3: maps of conv layers 3, 4, 5 (e.g. 512,1024,512; default: --arch's).")
  dataset: str = option("imagenet2012", "tfds image classification dataset name.")
  data_dir: str | None = option(None, "tfds data_dir (default: tfds' own).", recipe=False)
  train_split: str = option("train", "Split to train on (tfds split syntax, e.g. train+test).")
  eval_split: str | None = option(
      None, "Split to validate on (default: validation, or test if there is none).")
  classes: tuple[int, ...] = option(
      (), "Train and evaluate on these classes only, relabelled 0..k-1 in this order, e.g. "
      "0,1,2,3,4: the classes a transfer experiment pretrains on.")
  include_ids: str | None = option(
      None, "File of record ids, one per line: train on these images only, e.g. a fold's.")
  exclude_ids: str | None = option(
      None, "File of record ids, one per line, left out of training: e.g. the images that "
      "experiments.dedup found in a transfer dataset, Section 5.2.")
  mean_rgb: tuple[float, ...] = option(
      (), "Subtract this constant R,G,B mean (0..255) instead of the training split's mean "
      "image (Section 3), e.g. 123.675,116.28,103.53: ImageNet's, as the weights that "
      "experiments.import_weights reads were trained with.")
  resize_size: int | None = option(
      None, "Smaller side before cropping (default: 256/224 of the arch's input, Section 3).")
  train_crops: str = option("ten", "ten: the paper's 10 fixed crops; random: random crops and "
                            "flips; center: the centre crop only (no augmentation).",
                            choices=input_pipeline.TRAIN_CROPS)
  # The next two and lr_decay_epochs, warmup_epochs are compared through what they set:
  # train.total_steps, lr_decay_steps and warmup_steps (so 4 epochs equal their steps).
  num_epochs: float = option(70.0, "Epochs to train (Section 3: 70).", recipe=False)
  num_steps: int | None = option(None, "Steps to train; overrides --num_epochs.", recipe=False)
  seed: int = option(0, "Seed for init, dropout and data order.")
  train: TrainConfig = TrainConfig()
  lr_decay_epochs: tuple[float, ...] = option(
      (), "Epochs at which --lr_schedule=manual anneals.", recipe=False)
  warmup_epochs: float = option(0.0, "Epochs of --lr_schedule=cosine's linear warm-up.",
                                recipe=False)
  eval_batch_size: int | None = option(
      None, "Global evaluation batch (default: --batch_size).", recipe=False)
  eval_every_epochs: int = option(1, "Validate every N epochs (0: only at the end).")
  final_eval_crops: tuple[str, ...] = option(
      ("center", "ten"), "Crops of the final evaluation: center and/or ten (Section 3); empty: none.",
      choices=input_pipeline.EVAL_CROPS, recipe=False)  # Missing crops are evaluated on resuming.
  log_every: int = option(50, "Steps between progress lines.", recipe=False)
  checkpoint_every: int = option(1000, "Steps between checkpoints.", recipe=False)
  keep_checkpoints: int = option(3, "Latest checkpoints kept.", recipe=False)
  keep_epochs: tuple[int, ...] = option(FIG4_EPOCHS,
                                        "Epoch-end checkpoints kept forever (Fig. 4).",
                                        recipe=False)
  shuffle_buffer: int = option(10_000, "Examples in the training shuffle buffer.")
  mean_max_examples: int | None = option(
      None, "Images averaged for the mean image (default: the whole train split).")
  distributed: bool = option(False, "Call jax.distributed.initialize() (several hosts).",
                             recipe=False)
  coordinator_address: str | None = option(None, "host:port of process 0 (--distributed).",
                                           recipe=False)
  num_processes: int | None = option(None, "Number of processes (--distributed).",
                                     recipe=False)
  process_id: int | None = option(None, "This process's index (--distributed).", recipe=False)
  cpu_devices: int | None = option(
      None, "Make the CPU this many JAX devices, trained data parallel (on small models "
      "faster than one device: XLA keeps the cores busier).", recipe=False)
  visualize: bool = option(False, "After training, write the report: curves, layer-1 filters "
                           "(Fig. 6), top-9 projections (Fig. 2), occlusion (Fig. 7), evolution "
                           "(Fig. 4) into <workdir>/report.html.", recipe=False)

  def __post_init__(self):
    check_choices(self)
    self.network()  # A one-line ValueError for an edit the architecture cannot take.
    if self.num_steps is None and not self.num_epochs > 0:
      raise ValueError(f"num_epochs must be > 0, got {self.num_epochs}")
    if self.num_steps is not None and self.num_steps < 0:
      raise ValueError(f"num_steps must be >= 0, got {self.num_steps}")
    if self.cpu_devices is not None and self.cpu_devices < 1:
      raise ValueError(f"cpu_devices must be >= 1, got {self.cpu_devices}")
    if self.warmup_epochs < 0:
      raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
    if self.mean_max_examples is not None and self.mean_max_examples < 1:
      raise ValueError(f"mean_max_examples must be >= 1 (or unset: the whole split), got "
                       f"{self.mean_max_examples}")
    if self.checkpoint_every < 1 or self.log_every < 1:
      raise ValueError("checkpoint_every and log_every must be >= 1")

  def network(self, num_classes: int | None = None) -> arch_lib.Arch:
    """The `Arch` this run trains: the --arch preset with the Table 3 edits (--remove,
    --fc_features, --conv_features), with a `num_classes`-way softmax if given."""
    arch = arch_lib.get(self.arch)
    if self.remove or self.fc_features is not None or self.conv_features:
      arch = arch_lib.ablate(arch, remove=self.remove, fc_features=self.fc_features,
                             conv_features=self.conv_features or None)
    return arch if num_classes is None else arch_lib.with_classes(arch, num_classes)


# --- A run against its dataset ----------------------------------------------------------------


def input_config(cfg: RunConfig, image_size: int, batch_size: int) -> input_pipeline.InputConfig:
  """The input pipeline a run with `cfg` reads (Section 3: resize to 256/224 of the input)."""
  resize = cfg.resize_size or round(image_size * 256 / 224)
  return input_pipeline.InputConfig(
      dataset=cfg.dataset, data_dir=cfg.data_dir, train_split=cfg.train_split,
      eval_split=cfg.eval_split, image_size=image_size, resize_size=resize,
      global_batch_size=batch_size, train_crops=cfg.train_crops, seed=cfg.seed,
      shuffle_buffer=cfg.shuffle_buffer, mean_max_examples=cfg.mean_max_examples,
      classes=cfg.classes, include_ids=cfg.include_ids, exclude_ids=cfg.exclude_ids,
      mean_rgb=cfg.mean_rgb)


@dataclasses.dataclass(frozen=True)
class Resolved:
  """A run's configuration resolved against its dataset: what `train_and_evaluate` trains.

  config: the RunConfig with its schedule in steps (train.total_steps,
    lr_decay_steps, warmup_steps from the epochs the flags name): what
    config.json holds and a resumed run is compared with.
  arch: the network, with the dataset's number of classes.
  input: the training input pipeline's configuration.
  facts: what config.json keeps beside the config (num_classes,
    steps_per_epoch, total_steps, the digests of the id files).
  """
  config: RunConfig
  arch: arch_lib.Arch
  input: input_pipeline.InputConfig
  facts: dict[str, Any]

  @property
  def total_steps(self) -> int:
    return self.facts["total_steps"]

  @property
  def steps_per_epoch(self) -> int:
    return self.facts["steps_per_epoch"]


def resolve(cfg: RunConfig) -> Resolved:
  """`cfg` against its dataset: Section 3's schedule, given in epochs, in steps (reads the
  dataset's metadata, not its images).

  Raises:
    ValueError: an inconsistent configuration (one line).
  """
  arch = cfg.network()
  icfg = input_config(cfg, arch.image_size, cfg.train.batch_size)
  info = input_pipeline.dataset_info(icfg)
  if info.multi_label:
    raise ValueError(f"{cfg.dataset} labels each image with several classes; training needs "
                     "one label per image (transfer to it: python -m experiments.transfer)")
  arch = cfg.network(info.num_classes)
  spe = info.steps_per_epoch
  total = cfg.num_steps if cfg.num_steps is not None else math.ceil(cfg.num_epochs * spe)
  if cfg.train.lr_schedule == "cosine" and not round(cfg.warmup_epochs * spe) < total:
    raise ValueError(f"warmup_epochs={cfg.warmup_epochs} ({round(cfg.warmup_epochs * spe)} "
                     f"steps) must be shorter than the run ({total} steps): lower --warmup_epochs")
  cfg = dataclasses.replace(cfg, train=dataclasses.replace(
      cfg.train, lr_decay_steps=tuple(round(e * spe) for e in cfg.lr_decay_epochs),
      warmup_steps=round(cfg.warmup_epochs * spe), total_steps=total))
  facts = {"num_classes": arch.num_classes, "steps_per_epoch": spe, "total_steps": total}
  digests = {f: input_pipeline.ids_digest(input_pipeline.read_ids(getattr(cfg, f)))
             for f in ("include_ids", "exclude_ids") if getattr(cfg, f)}
  if digests:
    facts["ids_digests"] = digests
  return Resolved(config=cfg, arch=arch, input=icfg, facts=facts)


# --- Fields as flags -----------------------------------------------------------------------


def _type(hint) -> tuple[Any, Any]:
  """(base type, item type of a tuple or None) of a field's annotation, `| None` dropped."""
  if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
    (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
  if typing.get_origin(hint) is tuple:
    return tuple, typing.get_args(hint)[0]
  return hint, None


def _fields(cls) -> list[tuple[dataclasses.Field, Any]]:
  """(field, resolved annotation) of `cls` and its nested configs, flattened, in order."""
  hints = typing.get_type_hints(cls)
  out = []
  for f in dataclasses.fields(cls):
    if dataclasses.is_dataclass(hints[f.name]):
      out += _fields(hints[f.name])
    elif f.metadata.get("flag", False):
      out.append((f, hints[f.name]))
  return out


def flag_names(cls=RunConfig) -> list[str]:
  """The flags `define_flags(cls)` defines, in field order."""
  return [f.name for f, _ in _fields(cls)]


def define_flags(cls=RunConfig, flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines one absl flag per field of `cls` (and of its nested configs).

  Types follow the annotations: bool, int, float, str (an enum when the field
  has choices), each possibly None by default, and tuples as comma-separated
  lists. The default and help are the field's.
  """
  for f, hint in _fields(cls):
    base, _ = _type(hint)
    default, help_text, choices = f.default, f.metadata["help"], f.metadata["choices"]
    if base is tuple:
      flags.DEFINE_list(f.name, [str(v) for v in default], help_text, flag_values=flag_values)
    elif base is bool:
      flags.DEFINE_bool(f.name, default, help_text, flag_values=flag_values)
    elif base is int:
      flags.DEFINE_integer(f.name, default, help_text, flag_values=flag_values)
    elif base is float:
      flags.DEFINE_float(f.name, default, help_text, flag_values=flag_values)
    elif choices:
      flags.DEFINE_enum(f.name, default, list(choices), help_text, flag_values=flag_values)
    else:
      flags.DEFINE_string(f.name, default, help_text, flag_values=flag_values)


def _build(cls, value_of) -> Any:
  """`cls` with each flagged field's value from `value_of(field, annotation)`, nested too."""
  hints = typing.get_type_hints(cls)
  kwargs = {}
  for f in dataclasses.fields(cls):
    if dataclasses.is_dataclass(hints[f.name]):
      kwargs[f.name] = _build(hints[f.name], value_of)
    elif f.metadata.get("flag", False):
      kwargs[f.name] = value_of(f, hints[f.name])
  return cls(**kwargs)


def from_flags(cls=RunConfig, flag_values: flags.FlagValues = flags.FLAGS) -> Any:
  """The config the parsed flags describe (a one-line ValueError for bad values)."""
  def value_of(f, hint):
    value = flag_values[f.name].value
    if f.metadata["off"] is not None and value == f.metadata["off"]:
      return None
    base, item = _type(hint)
    return numbers(f.name, value, item) if base is tuple else value
  return _build(cls, value_of)


# --- JSON (config.json) ---------------------------------------------------------------------


def to_json(config) -> dict[str, Any]:
  """The config as a JSON-able dict (nested configs as nested dicts)."""
  return dataclasses.asdict(config)


def from_json(cls, obj: dict[str, Any]) -> Any:
  """`cls` from `to_json`'s dict. Keys it does not know (facts written beside the config,
  fields of a newer version) are ignored; missing ones take their defaults.

  Raises:
    ValueError: a value of the wrong kind (one line).
  """
  hints = typing.get_type_hints(cls)
  kwargs = {}
  for f in dataclasses.fields(cls):
    if f.name not in obj:
      continue
    value = obj[f.name]
    if dataclasses.is_dataclass(hints[f.name]):
      if not isinstance(value, dict):
        raise ValueError(f"{f.name} should be an object, got {value!r}")
      value = from_json(hints[f.name], value)
    elif isinstance(value, list):
      value = tuple(value)  # JSON has no tuples.
    kwargs[f.name] = value
  return cls(**kwargs)


# --- The same run? -----------------------------------------------------------------------------


def recipe_fields(cls=RunConfig, prefix: str = "") -> list[str]:
  """The fields that change what a run computes (every field but `option(recipe=False)`
  ones), nested ones as "train.learning_rate", in field order."""
  hints = typing.get_type_hints(cls)
  out = []
  for f in dataclasses.fields(cls):
    if dataclasses.is_dataclass(hints[f.name]):
      out += recipe_fields(hints[f.name], f"{prefix}{f.name}.")
    elif f.metadata.get("recipe", True):
      out.append(prefix + f.name)
  return out


def _get(config, dotted: str) -> Any:
  for name in dotted.split("."):
    config = getattr(config, name)
  return config


def recipe(config) -> dict[str, Any]:
  """{field: value} of `config`'s recipe fields (`recipe_fields`): what a run computes."""
  return {name: _get(config, name) for name in recipe_fields(type(config))}


def _show(value: Any) -> str:
  if isinstance(value, tuple):
    return ",".join(map(str, value)) or "(none)"
  return str(value)


def differences(stored: RunConfig, requested: RunConfig, *, ignore: typing.Collection[str] = (),
                longer: bool = False) -> list[str]:
  """The recipe fields whose values differ, as "name stored -> requested" ([] for the same run).

  Args:
    stored: the config a run was trained with (its config.json), its schedule
      in steps (`resolve`).
    requested: the config asked for now, resolved the same way.
    ignore: fields left out, dotted for nested ones (e.g. Table 3's
      architecture edits).
    longer: a run asked to go on for more steps is the same run when its
      learning rate does not depend on its length (every schedule but cosine):
      its first steps are those of the longer run.
  """
  if (longer and "cosine" not in (stored.train.lr_schedule, requested.train.lr_schedule)
      and requested.train.total_steps >= stored.train.total_steps):
    ignore = (*ignore, "train.total_steps")
  out = []
  asked = recipe(requested)
  for name, old in recipe(stored).items():
    new = asked[name]
    if name not in ignore and old != new:
      out.append(f"{name.removeprefix('train.')} {_show(old)} -> {_show(new)}")
  return out
