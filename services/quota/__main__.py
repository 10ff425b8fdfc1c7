"""`python -m quota` and the `metering-quota` console script."""

from metering.service import serve
from quota.app import build_app


def main() -> None:
    serve("quota", build_app)


if __name__ == "__main__":
    main()
