"""`python -m experiments.lorenz63`."""

from .cli import main


if __name__ == "__main__":
    main()
