"""Packaging hook: builds the reader page's image viewer with npm (everything else is in
pyproject.toml).

``frontend/`` holds the viewer's sources (Cornerstone3D, bundled by esbuild); its build output,
``dicom_node/api/static/viewer/``, is generated and not in git. Every build of the package
(``pip install .``, ``pip install -e .``, ``python -m build``) runs ``build_viewer`` first: it
runs ``npm ci`` when ``frontend/node_modules`` is missing or older than the lock file and
``npm run build`` when the output is missing or older than a source, so a second install with
``node_modules`` in place needs no network. Without npm it stops with a message saying what
to install. ``build_viewer`` is a sub-command of ``build`` rather than a ``build_py``
override because an editable install runs a custom ``build_py`` with its errors turned into
warnings, and would then install a page without its viewer.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from setuptools import Command, setup
from setuptools.command.build import build
from setuptools.errors import ExecError, FileError

ROOT = Path(__file__).resolve().parent
FRONTEND = ROOT / "frontend"
OUTPUT = ROOT / "dicom_node" / "api" / "static" / "viewer"
#: What the page loads; the build writes both.
OUTPUTS = (OUTPUT / "viewer.js", OUTPUT / "viewer.css")
#: What the output is built from (besides node_modules, which the lock file pins).
SOURCES = ("src", "build.mjs", "package.json", "package-lock.json")
NO_NPM = (
    "npm is needed to build the reader page's image viewer (frontend/) and was not found: "
    "install Node.js 18 or newer with npm (Debian: apt-get install nodejs npm), then install "
    "again; or build it on a machine with npm (cd frontend && npm ci && npm run build) and "
    "copy dicom_node/api/static/viewer/ here."
)


def _newest(paths: list[Path]) -> float:
    """The latest modification time among `paths` and the files below them."""
    times = [0.0]
    for path in paths:
        files = path.rglob("*") if path.is_dir() else [path]
        times.extend(f.stat().st_mtime for f in files if f.is_file())
    return max(times)


def viewer_is_stale() -> bool:
    """True when an output is missing or older than one of the sources."""
    if not all(path.is_file() for path in OUTPUTS):
        return True
    built = min(path.stat().st_mtime for path in OUTPUTS)
    return built < _newest([FRONTEND / name for name in SOURCES])


def _node_modules_are_stale() -> bool:
    installed = FRONTEND / "node_modules" / ".package-lock.json"
    lock = FRONTEND / "package-lock.json"
    return not installed.is_file() or installed.stat().st_mtime < lock.stat().st_mtime


class BuildViewer(Command):
    """``npm ci && npm run build`` in frontend/ when the viewer's output is missing or stale."""

    description = "build the reader page's image viewer (frontend/) with npm"
    user_options: list[tuple[str, str | None, str]] = []

    def initialize_options(self) -> None:
        """No options."""

    def finalize_options(self) -> None:
        """No options."""

    def run(self) -> None:
        """Build the viewer unless its output is up to date."""
        if not (FRONTEND / "package.json").is_file():
            # an sdist holds the built files; without them there is nothing to build from
            if all(path.is_file() for path in OUTPUTS):
                return
            raise FileError(f"neither the viewer's sources ({FRONTEND}) nor its build "
                            f"({OUTPUT}) are here")
        if not viewer_is_stale():
            self.announce("the viewer (dicom_node/api/static/viewer) is up to date", level=2)
            return
        npm = shutil.which("npm")
        if npm is None:
            raise ExecError(NO_NPM)
        if _node_modules_are_stale():
            self._npm(npm, "ci", "--no-audit", "--no-fund")
        self._npm(npm, "run", "build")
        if viewer_is_stale():
            raise ExecError(f"npm run build did not write {', '.join(map(str, OUTPUTS))}")

    def _npm(self, npm: str, *arguments: str) -> None:
        self.announce(f"running npm {' '.join(arguments)} in {FRONTEND}", level=2)
        try:
            subprocess.run([npm, *arguments], cwd=FRONTEND, check=True)
        except subprocess.CalledProcessError as exc:
            raise ExecError(f"npm {' '.join(arguments)} failed in {FRONTEND} "
                            f"(exit status {exc.returncode}); its output is above") from exc

    def get_outputs(self) -> list[str]:
        """None in the build folder: the files are written into the package's source tree,
        and build_py ships them from there as package data."""
        return []

    def get_output_mapping(self) -> dict[str, str]:
        """Nothing to map: the files are written inside the package."""
        return {}


class Build(build):
    """``build`` with the viewer built before anything is copied."""

    sub_commands = [("build_viewer", None), *build.sub_commands]


setup(cmdclass={"build": Build, "build_viewer": BuildViewer})
