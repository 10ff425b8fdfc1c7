"""`python -m console` and the `metering-console` console script."""

from console.app import serve


def main() -> None:
    serve()


if __name__ == "__main__":
    main()
