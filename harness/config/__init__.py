"""The config tree of a run (`schema`) and how it is read, written and hashed (`codec`).

This package imports nothing above it: no torch, no parts, no grid.
"""
from harness.config.codec import from_dict, get_dotted, parse_override, read_yaml, set_dotted, signature, to_dict
from harness.config.schema import (
                                  AugConfig,
                                  DataConfig,
                                  DistConfig,
                                  LaunchConfig,
                                  LdmlrConfig,
                                  LogConfig,
                                  LossConfig,
                                  ModelConfig,
                                  OptimConfig,
                                  RunConfig,
                                  ScheduleConfig,
                                  StageConfig,
)

__all__ = ["AugConfig", "DataConfig", "DistConfig", "LaunchConfig", "LdmlrConfig", "LogConfig", "LossConfig",
           "ModelConfig", "OptimConfig", "RunConfig", "ScheduleConfig", "StageConfig", "from_dict", "get_dotted",
           "parse_override", "read_yaml", "set_dotted", "signature", "to_dict"]
