"""`python -m ledger` and the `metering-ledger` console script."""

from ledger.app import build_app
from metering.service import serve


def main() -> None:
    serve("ledger", build_app)


if __name__ == "__main__":
    main()
