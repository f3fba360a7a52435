"""``python -m bptrain`` (and ``torchrun -m bptrain``) runs the CLI."""

from bptrain.cli import app

if __name__ == "__main__":
    app()
