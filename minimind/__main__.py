"""``python -m minimind [key=value ...]``: the training command, from any folder (see cli.py)."""

from minimind.cli import main

if __name__ == "__main__":
    main()
