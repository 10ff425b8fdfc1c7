"""The pure core compiled with mypyc, used only while it was built from exactly these sources.

Why: the fold and the state it works on are plain typed Python. mypyc (which ships with mypy,
already a dependency) compiles the same source to a C extension that folds about 1.5 times as
fast (issue 17), with no second implementation to keep in step.

`make install` runs `python -m metering.native_core` after installing the dependencies. It
compiles `COMPILED` into `build/native-core/` (gitignored) and writes `manifest.json` there with
the sha256 of every source it compiled. On import, `metering.core` calls `activate`: it puts the
build ahead of the sources only while every compiled source still has the digest the build
recorded. An edited rule therefore never runs as its stale compiled form: the core falls back
to the source until the next build. Neither does a mutant under `make mutation`, which runs in
a copy of the tree with no build. `METERING_PURE_CORE=1` forces the source.

Compiled and pure must fold alike, to the micro-credit. `make test` runs the whole suite
compiled, then the unit tests again pure; `tests/unit/test_native_core.py` also folds one
event log both ways and compares every result and state.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import sys
import sysconfig
from pathlib import Path

COMPILED = ("calendar", "catalog", "pricing", "state", "seat_status", "fold", "views")
"""The modules of `metering/core` that are compiled, by name (the rest stay Python: the rate
card is pydantic models, money and receipts are not on the hot path)."""

PURE_ENV = "METERING_PURE_CORE"
GROUP = "metering_core"
"""mypyc's name for the shared library of the compiled modules (`metering_core__mypyc`)."""

CORE_DIR = Path(__file__).resolve().parent / "core"
BUILD_DIR = Path(__file__).resolve().parent.parent / "build" / "native-core"
MANIFEST = "manifest.json"


def sources(core_dir: Path = CORE_DIR) -> dict[str, str]:
    """The sha256 of each compiled module's source."""
    return {
        name: hashlib.sha256((core_dir / f"{name}.py").read_bytes()).hexdigest()
        for name in COMPILED
    }


def platform_tag() -> str:
    """The interpreter and extension suffix a build is for (a build for another is unusable)."""
    return f"{sys.implementation.cache_tag}{sysconfig.get_config_var('EXT_SUFFIX')}"


def group_library(build_dir: Path = BUILD_DIR) -> Path:
    """The build's shared library of the compiled modules, for this interpreter."""
    return build_dir / f"{GROUP}__mypyc{sysconfig.get_config_var('EXT_SUFFIX')}"


def unusable(build_dir: Path = BUILD_DIR, core_dir: Path = CORE_DIR) -> str | None:
    """Why the build in `build_dir` must not be used for the sources in `core_dir` (None:
    it may)."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return f"{PURE_ENV} is set"
    try:
        manifest = json.loads((build_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return "not built (make install builds it)"
    platform = platform_tag()
    if manifest.get("platform") != platform:
        return f"built for {manifest.get('platform')}, this is {platform}"
    if not group_library(build_dir).exists():
        return f"not built: no {group_library(build_dir).name} (make install builds it)"
    changed = sorted(
        name
        for name, digest in sources(core_dir).items()
        if manifest["sources"].get(name) != digest
    )
    if changed:
        return f"stale: {', '.join(changed)} changed since the build (make install rebuilds it)"
    return None


def activate(core_path: list[str]) -> str | None:
    """Put the build ahead of the sources in `metering.core`'s `__path__` if it may be used;
    returns why not otherwise (see `unusable`)."""
    reason = unusable()
    if reason is None:
        _load_group_library()
        core_path.insert(0, str(BUILD_DIR / "metering" / "core"))
    return reason


def _load_group_library(build_dir: Path = BUILD_DIR) -> None:
    """The compiled modules import their shared library as a top-level module: load it from
    its file. The build is not put on `sys.path`: a process spawned from this one starts
    with this `sys.path`, and there the build's `metering/` directory would be found as the
    package (a namespace without its sources) ahead of the editable install's finder."""
    name = f"{GROUP}__mypyc"
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, group_library(build_dir))
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def build(build_dir: Path = BUILD_DIR) -> None:
    """Compile `COMPILED` into `build_dir` and record their sources' digests."""
    from mypyc.build import mypycify  # the build needs mypy and a C compiler; running does not
    from setuptools import setup

    digests = sources()
    (build_dir / MANIFEST).unlink(missing_ok=True)
    with contextlib.chdir(CORE_DIR.parent.parent):  # mypyc names modules by their paths
        setup(
            name="metering-native-core",
            ext_modules=mypycify(
                [f"metering/core/{name}.py" for name in COMPILED],
                group_name=GROUP,
                multi_file=True,
                target_dir=str(build_dir.parent / "native-core-c"),
            ),
            script_args=[
                "--quiet",
                "build_ext",
                "--build-lib",
                str(build_dir),
                "--build-temp",
                str(build_dir.parent / "native-core-obj"),
                "--parallel",
                str(os.cpu_count() or 1),
            ],
        )
    manifest = {"platform": platform_tag(), "sources": digests}
    (build_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def main(build_dir: Path = BUILD_DIR) -> int:
    """`make install`'s step: build, or say why not. A machine without a C compiler still
    installs and runs: the core runs from its source (slower, the same results)."""
    try:
        build(build_dir)
    except (Exception, SystemExit) as error:  # setuptools exits on a failed compile
        print(
            f"metering.core was not compiled ({error}); it runs from its source. "
            "Install gcc and the Python headers, then run make install again.",
            file=sys.stderr,
        )
        return 0
    print(f"metering.core compiled with mypyc into {build_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
