"""`python -m ingest` and the `metering-ingest` console script."""

from ingest.app import build_app
from metering.service import serve


def main() -> None:
    serve("ingest", build_app)


if __name__ == "__main__":
    main()
