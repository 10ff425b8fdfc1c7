"""The rules, with no I/O (README.md here). Compiled by mypyc where a current build exists."""

from metering.native_core import activate

PURE_REASON = activate(__path__)
"""Why the sources run rather than their compiled build (None: the build runs)."""
NATIVE = PURE_REASON is None
