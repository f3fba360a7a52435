"""The config schema: the one place where every option and its default lives.

A YAML file plus dotted command-line overrides become a validated ``Config``.
Every section forbids unknown keys (a typo must never pass silently), choices
are ``Literal`` names, and variants (data sources, models, optimizers,
schedulers) are discriminated unions so each variant only accepts its own keys.
Field docstrings become the descriptions shown by ``config schema`` and in
editors, so the docs and the validation can never drift apart.

The package imports pydantic and yaml but never torch: ``config validate`` and
``config show`` stay fast. Where things live:

- ``base``: ``Section`` (the base of every section) and ``KeyPath``;
- ``data``, ``model``, ``optim`` (loss, optimizer, scheduler), ``trainer`` (trainer, logging): the sections;
- ``extend``: the user's own code: class_path variants of data/loss/optimizer/scheduler, ``metrics``, ``callbacks``;
- ``schema``: the root ``Config`` and ``models_in``;
- ``loading``: YAML (read by ``bptrain.safe_yaml``: safe, bounded) with line numbers, overrides, ``load_config`` and ``validate_config``;
- ``compose``: ``base:`` includes, several files, ``${env:VAR}``, variant shorthands, origins;
- ``error_messages``: validation errors with file, line, key path and a did-you-mean;
- ``dump``: ``to_dict``, ``to_yaml`` and ``json_schema``.

Import from here (``from bptrain.config import load_config``); the modules are the layout, not the API.
"""

from bptrain.config.adversarial import AdversarialConfig
from bptrain.config.base import KeyPath, Section
from bptrain.config.data import (
    AddingData,
    BlobsData,
    CopyData,
    CsvData,
    DataCommon,
    DataConfig,
    DigitsData,
    ImageFolderData,
    MajorityData,
    MoonsData,
    NpzData,
    ShapesData,
    SineData,
    SineSeriesData,
    SpiralsData,
    XorData,
)
from bptrain.config.dump import json_schema, to_dict, to_yaml
from bptrain.config.error_messages import format_validation_error
from bptrain.config.extend import (
    CallbackConfig,
    CustomData,
    CustomLoss,
    CustomMetric,
    CustomOptimizer,
    CustomScheduler,
    MetricConfig,
)
from bptrain.config.loading import (
    apply_override,
    compose_config,
    load_config,
    load_config_with_origins,
    parse_override,
    parse_yaml,
    validate_config,
)
from bptrain.config.model import (
    Activation,
    CNNModel,
    CustomModel,
    Init,
    MLPModel,
    ModelConfig,
    Norm,
    RNNModel,
    TransformerModel,
)
from bptrain.config.optim import (
    AdagradOptimizer,
    AdamOptimizer,
    CosineScheduler,
    ExponentialScheduler,
    LBFGSOptimizer,
    LossConfig,
    MomentumOptimizer,
    MultiStepScheduler,
    NoScheduler,
    OneCycleScheduler,
    OptimizerCommon,
    OptimizerConfig,
    PlateauScheduler,
    RMSpropOptimizer,
    SchedulerConfig,
    SGDOptimizer,
    StepScheduler,
    WarmupCosineScheduler,
)
from bptrain.config.schema import Config, models_in
from bptrain.config.trainer import (
    CheckpointConfig,
    EarlyStoppingConfig,
    GradClip,
    LoggingConfig,
    MlflowConfig,
    TrainerConfig,
)
from bptrain.safe_yaml import YamlLoader

__all__ = [
    "Activation",
    "AdagradOptimizer",
    "AdamOptimizer",
    "AddingData",
    "AdversarialConfig",
    "BlobsData",
    "CNNModel",
    "CallbackConfig",
    "CheckpointConfig",
    "Config",
    "CopyData",
    "CosineScheduler",
    "CsvData",
    "CustomData",
    "CustomLoss",
    "CustomMetric",
    "CustomModel",
    "CustomOptimizer",
    "CustomScheduler",
    "DataCommon",
    "DataConfig",
    "DigitsData",
    "EarlyStoppingConfig",
    "ExponentialScheduler",
    "GradClip",
    "ImageFolderData",
    "Init",
    "KeyPath",
    "LBFGSOptimizer",
    "LoggingConfig",
    "LossConfig",
    "MLPModel",
    "MajorityData",
    "MetricConfig",
    "MlflowConfig",
    "ModelConfig",
    "MomentumOptimizer",
    "MoonsData",
    "MultiStepScheduler",
    "NoScheduler",
    "Norm",
    "NpzData",
    "OneCycleScheduler",
    "OptimizerCommon",
    "OptimizerConfig",
    "PlateauScheduler",
    "RMSpropOptimizer",
    "RNNModel",
    "SGDOptimizer",
    "SchedulerConfig",
    "Section",
    "ShapesData",
    "SineData",
    "SineSeriesData",
    "SpiralsData",
    "StepScheduler",
    "TrainerConfig",
    "TransformerModel",
    "WarmupCosineScheduler",
    "XorData",
    "YamlLoader",
    "apply_override",
    "compose_config",
    "format_validation_error",
    "json_schema",
    "load_config",
    "load_config_with_origins",
    "models_in",
    "parse_override",
    "parse_yaml",
    "to_dict",
    "to_yaml",
    "validate_config",
]
