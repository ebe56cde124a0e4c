"""``python -m evaclip``, the same as the ``evaclip`` command (``torchrun -m evaclip train ...`` needs this)."""
from evaclip.cli.main import entry

if __name__ == "__main__":
    entry()
