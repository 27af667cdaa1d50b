"""Natural Dreamer: a readable, tested DreamerV3 in PyTorch.

The public names users and checks rely on (see CONTRACT.md) are importable from here.
"""

from natural_dreamer.buffer import ReplayBuffer
from natural_dreamer.config import AttrDict, ConfigError, load_config
from natural_dreamer.dreamer import Dreamer
from natural_dreamer.utils import fast_mode, lambda_returns, symexp, symlog, two_hot

__all__ = [
    "AttrDict",
    "ConfigError",
    "Dreamer",
    "ReplayBuffer",
    "fast_mode",
    "lambda_returns",
    "load_config",
    "symexp",
    "symlog",
    "two_hot",
]
