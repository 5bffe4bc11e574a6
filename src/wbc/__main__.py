"""``python -m wbc``: the same as the ``wbc`` command."""

from wbc.cli import main

if __name__ == "__main__":
    main()
