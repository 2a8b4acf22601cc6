"""`python -m worker.exporter`: an alias of `python -m services.exporter`, kept for
deployments that name it."""

from services.exporter import *  # noqa: F403
from services.exporter import main

if __name__ == "__main__":
    raise SystemExit(main())
