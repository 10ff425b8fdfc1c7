"""Credits as integer micro-credits, and their decimal-string form for people.

Money never passes through a float: amounts are ``int`` micro-credits
(1 credit = 1,000,000) everywhere except at the edges, where they are decimal strings.
"""

import re

MICRO = 1_000_000
DECIMALS = 6

_DECIMAL = re.compile(r"(-?)(\d+)(?:\.(\d+))?")


class CreditsFormatError(ValueError):
    """A decimal string that is not a valid amount of credits."""


def to_decimal_string(micro: int) -> str:
    """Render micro-credits as a decimal string: 3_180_000 -> "3.18", 5_000_000 -> "5"."""
    sign = "-" if micro < 0 else ""
    whole, fraction = divmod(abs(micro), MICRO)
    if not fraction:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{fraction:06d}".rstrip("0")


def parse_credits(text: str, *, allow_negative: bool = False) -> int:
    """Parse a decimal string with at most 6 decimals into millionths: "3.18" -> 3_180_000.

    Also used for other 6-decimal fixed-point numbers (coefficients, rounding units).
    """
    if not isinstance(text, str):
        raise CreditsFormatError(f'expected a decimal string such as "3.18", got {text!r}')
    match = _DECIMAL.fullmatch(text)
    if match is None:
        raise CreditsFormatError(f'{text!r} is not a decimal number such as "3.18"')
    sign, whole, fraction = match.groups()
    fraction = fraction or ""
    if len(fraction) > DECIMALS:
        raise CreditsFormatError(f"{text!r} has more than {DECIMALS} decimals")
    micro = int(whole) * MICRO + int(fraction.ljust(DECIMALS, "0"))
    if sign:
        if not allow_negative and micro:
            raise CreditsFormatError(f"{text!r} is negative")
        micro = -micro
    return micro
