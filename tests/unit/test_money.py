import pytest

from metering.core.money import CreditsFormatError, parse_credits, to_decimal_string


@pytest.mark.parametrize(
    ("micro", "text"),
    [
        (3_180_000, "3.18"),
        (5_000_000, "5"),
        (0, "0"),
        (1, "0.000001"),
        (1_500_000, "1.5"),
        (625_000_000_000, "625000"),
        (-3_180_000, "-3.18"),
    ],
)
def test_decimal_string_round_trip(micro: int, text: str) -> None:
    assert to_decimal_string(micro) == text
    assert parse_credits(text, allow_negative=True) == micro


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1.1234567", "more than 6 decimals"),
        ("-1", "is negative"),
        ("abc", "not a decimal number"),
        ("1e3", "not a decimal number"),
        ("", "not a decimal number"),
        (" 1", "not a decimal number"),
        (1.5, "expected a decimal string"),
    ],
)
def test_parse_credits_refuses(text: object, message: str) -> None:
    with pytest.raises(CreditsFormatError, match=message):
        parse_credits(text)  # type: ignore[arg-type]


def test_parse_credits_trailing_zeros() -> None:
    assert parse_credits("3.180000") == 3_180_000
    assert parse_credits("007") == 7_000_000
