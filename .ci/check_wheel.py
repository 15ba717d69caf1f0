"""Check the contents of the built wheel before it is installed or published.

Usage: python .ci/check_wheel.py dist/airflow_provider_sepa-*.whl

The wheel must contain every module of the package, ``py.typed``, the license text and the
entry point through which Airflow discovers the provider. It must not contain the tests, the
sample DAGs or any other top-level package. Exits with status 1 and lists every problem found.
"""

from __future__ import annotations

import configparser
import sys
import zipfile
from pathlib import Path

PACKAGE = "airflow_provider_sepa"
REPO_ROOT = Path(__file__).resolve().parent.parent
REQUIRED_FILES = (
    f"{PACKAGE}/py.typed",
    f"{PACKAGE}/get_provider_info.py",
    f"{PACKAGE}/emulator/__init__.py",
    f"{PACKAGE}/emulator/__main__.py",
)
ENTRY_POINT_GROUP = "apache_airflow_provider"
ENTRY_POINT = "provider_info"
ENTRY_POINT_TARGET = f"{PACKAGE}.get_provider_info:get_provider_info"


def check_wheel(wheel: Path) -> list[str]:
    """Return one message per problem in the wheel's file list and metadata."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        dist_info = sorted({name.split("/", 1)[0] for name in names if name.split("/", 1)[0].endswith(".dist-info")})
        if len(dist_info) != 1:
            return [f"expected one .dist-info folder, found {dist_info}"]
        entry_points_name = f"{dist_info[0]}/entry_points.txt"
        entry_points = archive.read(entry_points_name).decode() if entry_points_name in names else None
        metadata = archive.read(f"{dist_info[0]}/METADATA").decode()

    problems = [f"missing {name}" for name in REQUIRED_FILES if name not in names]

    # Every module of the source tree must be packaged, so no subpackage is dropped by the
    # package discovery settings.
    source_modules = {path.relative_to(REPO_ROOT).as_posix() for path in (REPO_ROOT / PACKAGE).rglob("*.py")}
    problems += [f"missing module {name}" for name in sorted(source_modules - names)]

    # Only the package and its metadata may be installed, so tests/ and dags/ must not appear.
    top_level = {name.split("/", 1)[0] for name in names}
    problems += [f"unexpected top-level entry {name}" for name in sorted(top_level - {PACKAGE, dist_info[0]})]

    if f"{dist_info[0]}/licenses/LICENSE" not in names:
        problems.append(f"missing {dist_info[0]}/licenses/LICENSE")
    if "License-Expression: Apache-2.0" not in metadata.splitlines():
        problems.append("METADATA has no 'License-Expression: Apache-2.0' line")

    if entry_points is None:
        problems.append(f"missing {entry_points_name}")
    else:
        parser = configparser.ConfigParser()
        parser.read_string(entry_points)
        target = parser.get(ENTRY_POINT_GROUP, ENTRY_POINT, fallback=None)
        if target != ENTRY_POINT_TARGET:
            problems.append(
                f"entry point [{ENTRY_POINT_GROUP}] {ENTRY_POINT} is {target!r}, expected {ENTRY_POINT_TARGET!r}"
            )
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("Usage: check_wheel.py WHEEL", file=sys.stderr)
        return 2
    wheel = Path(argv[0])
    problems = check_wheel(wheel)
    if problems:
        print(f"{wheel.name}: {len(problems)} problem(s):", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(f"{wheel.name}: contents OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
