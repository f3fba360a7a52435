"""bptrain: YAML-driven PyTorch training with backpropagation made visible.

Importing this package must stay cheap: the CLI's ``--help`` path imports it, and
torch is imported only by the modules that train, evaluate or inspect.
"""

__version__ = "0.1.0"
