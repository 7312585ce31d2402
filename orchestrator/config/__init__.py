"""Typed configuration: YAML + dotted ``key=value`` overrides, validated once at the door.

``schema`` holds one pydantic model per section (fields documented, their range rules
beside them), ``checks`` the rules between sections, ``loading`` the file and overrides,
``secrets`` redaction, ``derived`` what the sweep reads off a config. Errors are
``ConfigError(dotted key, problem, fix)``; the CLI turns them into exit code 2. This package
imports neither Ray nor MLflow.
"""

from orchestrator.config.checks import PBT_MUTABLE
from orchestrator.config.derived import Goal, asha_promotes, goal, rank_metric, rungs
from orchestrator.config.errors import ConfigError
from orchestrator.config.loading import (
    apply_override,
    config_hash,
    flatten,
    from_dict,
    json_schema,
    load,
    parse,
    set_dotted,
    to_dict,
    to_yaml,
    with_values,
)
from orchestrator.config.schema import (
    METRICS,
    REDACTED,
    SECRET,
    SPACE_TYPES,
    AutopilotConfig,
    Config,
    DataConfig,
    DiagnosisConfig,
    EarlyStoppingConfig,
    ModelConfig,
    ScalingConfig,
    ServeConfig,
    SweepConfig,
    TrackingConfig,
    TrainConfig,
    get,
    secret,
)
from orchestrator.config.secrets import (
    is_redacted,
    redact,
    redact_uri,
    redacted_value,
    restore,
    secret_fields,
    secrets_set,
    split_credentials,
)

__all__ = [
    "METRICS",
    "PBT_MUTABLE",
    "REDACTED",
    "SECRET",
    "SPACE_TYPES",
    "Config",
    "ConfigError",
    "DataConfig",
    "Goal",
    "AutopilotConfig",
    "DiagnosisConfig",
    "EarlyStoppingConfig",
    "ModelConfig",
    "ScalingConfig",
    "ServeConfig",
    "SweepConfig",
    "TrackingConfig",
    "TrainConfig",
    "apply_override",
    "asha_promotes",
    "config_hash",
    "flatten",
    "from_dict",
    "get",
    "goal",
    "is_redacted",
    "json_schema",
    "load",
    "parse",
    "rank_metric",
    "redact",
    "redact_uri",
    "redacted_value",
    "restore",
    "rungs",
    "secret",
    "secret_fields",
    "secrets_set",
    "set_dotted",
    "split_credentials",
    "to_dict",
    "to_yaml",
    "with_values",
]
