"""Which distributions the GPU benchmarks need, and which of them the lent machine lacks.

Used by ``bench/device/prepare.sh`` (on the development machine, never on the device):

``trace OUT.json -- SCRIPT ARGS...``
    Runs ``SCRIPT`` in this interpreter as ``__main__`` (its ``--size tiny --device cpu`` smoke
    mode) and, once it has finished, writes the distributions that provided a module in
    ``sys.modules`` ("imported") and the roots: the distributions whose modules the
    repository's own loaded code (the script, ``dicom_node``, ``inference``, ``tests/support``)
    names in an import statement. Running the script rather than importing it catches the
    imports that the node makes on demand (ONNX export while importing a checkpoint, ONNX
    Runtime when loading a bundle, pydicom when reading the study): an import-only pass would
    miss them.

``plan --device-list F --lock F --out REQS TRACE.json...``
    The roots and their ``Requires-Dist`` closure (markers evaluated for the device's
    CPython 3.12; a distribution the device has ends the walk there: its needs are the
    device's), less what the device already has (``device-packages.txt``) and less the node's
    own packages (they travel as source, on ``PYTHONPATH``), pinned to the lock. Writes
    ``name==version`` lines to ``REQS`` and prints the table. Distributions imported in the
    trace but outside that closure are listed and NOT carried: libraries import them only
    because they happen to be installed here (transformers loads ``kernels`` when present,
    huggingface_hub its HTTP client's extras, ...); carrying ``kernels`` would even change what
    transformers does on the device.

``installed SITE`` (on the device, from run.sh)
    Each distribution installed under ``SITE`` and whether its requirements are met by what
    that interpreter has (the device list records few versions).

``check WHEEL_DIR --device-list F``
    Reads each wheel's ``Requires-Dist`` (markers evaluated for CPython 3.12 on x86-64 Linux,
    extras skipped) and reports any requirement that is neither carried nor on the device, and
    any distribution carried twice (two versions stop the whole ``pip install``). Exit 1 on
    either.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata as metadata
import json
import os
import re
import runpy
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: The node's own distribution: its packages travel with the working tree.
OWN = "cxr-dicom-node"
#: Imported in the trace through a plugin hook (no import statement names it) and needed, but
#: replaced by something smaller that prepare.sh carries instead.
SUBSTITUTES = {
    "pydicom-data": "sample_study() needs only its RG1_UNCR.dcm, which prepare.sh puts in "
                    ".whl/data/ for pydicom's cache (the 34 MB wheel would not fit)",
}
#: On the device, but at a version its notes do not record, while a carried wheel needs a
#: recent one: carried too (ahead of site-packages on PYTHONPATH, so it wins there).
ALSO_CARRY = {
    "typing-extensions": "pydantic 2.14 and pydantic-core need >= 4.16.0; the device's "
                         "version is not recorded; pure Python, backward compatible, 45 kB",
}
#: The device's interpreter, for environment markers in Requires-Dist.
DEVICE_ENV = {
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "sys_platform": "linux",
    "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
    "platform_release": "", "platform_version": "", "implementation_version": "3.12.3",
    "extra": "",
}


def norm(name: str) -> str:
    """PEP 503 normalised name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_names(path: Path) -> dict[str, str | None]:
    """``name [version]`` lines, comments and blanks skipped."""
    names: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition(" ")
            names[norm(name)] = version.strip() or None
    return names


def read_lock(path: Path) -> dict[str, str]:
    """``name==version`` pins of a pip-compile lock (hash and comment lines skipped)."""
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", line)
        if match:
            pins[norm(match[1])] = match[2]
    return pins


def _under(path: str, folder: Path) -> bool:
    if not os.path.isabs(path):  # some modules carry a bare file name (torch.ops: '_ops.py')
        return False
    try:
        Path(path).resolve().relative_to(folder)
    except ValueError:
        return False
    return True


def loaded_distributions() -> tuple[dict[str, str], list[str]]:
    """``({distribution: version}, [unmapped top-level modules])`` for ``sys.modules``."""
    top_levels: dict[str, list[str]] = {}
    for name, module in list(sys.modules.items()):
        top = name.partition(".")[0]
        if top in sys.stdlib_module_names or top in sys.builtin_module_names:
            continue
        if top.startswith("__") or module is None:
            continue
        path = getattr(module, "__file__", None)
        if path and _under(path, REPO):
            top = ""  # the repository's own code (dicom_node, inference, tests/support, ...)
        if top:
            top_levels.setdefault(top, []).append(path or "")
    owners = metadata.packages_distributions()
    found: dict[str, str] = {}
    unmapped = []
    by_file: dict[str, str] | None = None
    for top, paths in sorted(top_levels.items()):
        candidates = {norm(d) for d in owners.get(top, [])}
        if len(candidates) > 1:  # a namespace shared by several (google, nvidia, ...)
            if by_file is None:
                by_file = _files_to_distributions()
            candidates = {by_file[os.path.realpath(p)] for p in paths
                          if p and os.path.realpath(p) in by_file}
        if not candidates:
            unmapped.append(top)
        for dist in candidates - {OWN}:
            found[dist] = metadata.version(dist)
    return found, unmapped


def _files_to_distributions() -> dict[str, str]:
    files = {}
    for dist in metadata.distributions():
        for file in dist.files or ():
            if file.suffix in (".py", ".so", ".pyc"):
                files[os.path.realpath(str(dist.locate_file(file)))] = norm(dist.metadata["Name"])
    return files


def imported_names(path: Path) -> set[str]:
    """Top-level module names in the import statements of one source file (anywhere in it,
    function bodies included; relative imports skipped: they stay in the repository)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


def root_distributions(script: str) -> dict[str, str]:
    """``{distribution: version}`` of what the repository's loaded code imports itself."""
    me = Path(__file__).resolve()
    sources = {Path(script).resolve()}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if (path and path.endswith(".py") and _under(path, REPO) and os.path.exists(path)
                and Path(path).resolve() != me):
            sources.add(Path(path).resolve())
    names: set[str] = set()
    for source in sources:
        names |= imported_names(source)
    loaded = {name.partition(".")[0] for name in sys.modules}
    owners = metadata.packages_distributions()
    roots = {}
    for name in sorted(names & loaded):
        for dist in owners.get(name, []):
            if norm(dist) != OWN:
                roots[norm(dist)] = metadata.version(dist)
    return roots


def trace(out: Path, script: str, args: list[str]) -> None:
    sys.argv = [script, *args]
    sys.path.insert(0, str(Path(script).resolve().parent))  # as `python SCRIPT` would
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        found, unmapped = loaded_distributions()
        roots = root_distributions(script)
        out.write_text(json.dumps({"script": script, "distributions": found, "roots": roots,
                                   "unmapped": unmapped}, indent=2, sort_keys=True))
        print(f"[deps] {script}: {len(found)} distributions imported, {len(roots)} by the "
              f"repository's code; modules from no distribution: {unmapped or 'none'}",
              file=sys.stderr)


def requirements(dist: str) -> list[str]:
    """Names that ``dist`` (installed here) requires on the device's interpreter."""
    from packaging.requirements import Requirement

    names = []
    for text in metadata.requires(dist) or ():
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(DEVICE_ENV):
            names.append(norm(req.name))
    return names


def plan(device_list: Path, lock: Path, out: Path, traces: list[Path]) -> None:
    device = read_names(device_list)
    pins = read_lock(lock)
    imported: dict[str, str] = {}
    roots: set[str] = set()
    for path in traces:
        data = json.loads(path.read_text())
        imported |= data["distributions"]
        roots |= set(data["roots"])
    # Walk Requires-Dist from the roots; stop at what the device has.
    needed, queue, why = set(), sorted(roots), {r: "imported by the repository" for r in roots}
    while queue:
        dist = queue.pop()
        if dist in needed or dist == OWN:
            continue
        needed.add(dist)
        if dist in device:
            continue
        try:
            deps = requirements(dist)
        except metadata.PackageNotFoundError:
            why[dist] += "; NOT INSTALLED HERE: its own needs are unknown"
            continue
        for dep in deps:
            why.setdefault(dep, f"required by {dist}")
            queue.append(dep)
    lines, rows = [], []
    for dist in sorted(needed | set(imported)):
        here = imported.get(dist) or _version(dist) or "-"
        if dist in device and dist in ALSO_CARRY and dist in needed:
            pin = pins[dist]
            rows.append((dist, here, f"CARRY {pin} although on the device: {ALSO_CARRY[dist]}"))
            lines.append(f"{dist}=={pin}")
        elif dist in device:
            rows.append((dist, here, "on the device" + (f" ({device[dist]})" if device[dist]
                                                          else "")))
        elif dist in SUBSTITUTES:
            rows.append((dist, here, f"not carried: {SUBSTITUTES[dist]}"))
        elif dist not in needed:
            rows.append((dist, here, "not carried: imported here only because installed here"))
        else:
            note = "" if dist in imported else ", not imported by the smoke runs"
            if dist in pins:
                pin = pins[dist]
            else:  # the lock does not reach it: the version the trace ran with
                pin, note = here, note + f", not in {lock.name}: version here"
            rows.append((dist, here, f"CARRY {pin} ({why[dist]}{note})"))
            lines.append(f"{dist}=={pin}")
    width = max(len(r[0]) for r in rows)
    print(f"{'distribution':{width}}  {'here':16}  device / plan")
    for dist, here, what in rows:
        print(f"{dist:{width}}  {here:16}  {what}")
    out.write_text("\n".join(lines) + "\n")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def wheel_metadata(path: Path) -> tuple[str, str, list[str]]:
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist()
                    if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        text = archive.read(name).decode()
    fields = [line.split(":", 1) for line in text.split("\n\n", 1)[0].splitlines()
              if ":" in line]
    get = lambda key: [v.strip() for k, v in fields if k == key]  # noqa: E731
    return norm(get("Name")[0]), get("Version")[0], get("Requires-Dist")


def check(wheels: Path, device_list: Path) -> int:
    from packaging.requirements import Requirement

    device = read_names(device_list)
    carried: dict[str, list[str]] = {}
    requires: dict[str, list[str]] = {}
    for wheel in sorted(wheels.glob("*.whl")):
        name, version, reqs = wheel_metadata(wheel)
        carried.setdefault(name, []).append(version)
        requires[name] = reqs
    status = 0
    for name, versions in carried.items():
        if len(versions) > 1:
            print(f"[deps] {name} carried in {len(versions)} versions: {versions}")
            status = 1
    for name, reqs in sorted(requires.items()):
        for text in reqs:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(DEVICE_ENV):
                continue  # an extra, or another Python / platform
            dep = norm(req.name)
            if dep not in carried and dep not in device:
                print(f"[deps] {name} requires {text!r}: neither carried nor on the device")
                status = 1
            elif dep in carried and not req.specifier.contains(carried[dep][0],
                                                               prereleases=True):
                print(f"[deps] {name} requires {text!r}, carried {dep} {carried[dep][0]}")
                status = 1
            elif dep in device and (known := device[dep]) and not req.specifier.contains(
                    known, prereleases=True):
                print(f"[deps] {name} requires {text!r}, the device has {dep} {known}")
                status = 1
            elif dep in device and dep not in carried and not device[dep] and str(
                    req.specifier):
                print(f"[deps] {name} requires {text!r}: on the device at a version not "
                      "recorded (run.sh's env.txt checks it there)")
    return status


def installed(site: Path) -> int:
    """On the device: each distribution installed under ``site`` (the carried wheels), and
    whether what it requires is importable there at a fitting version (device versions the
    notes did not record are checked here, at no device-time cost beyond a second)."""
    from packaging.requirements import Requirement

    status = 0
    for dist in sorted(metadata.distributions(path=[str(site)]),
                       key=lambda d: norm(d.metadata["Name"])):
        problems = []
        for text in dist.requires or ():
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            try:
                have = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                problems.append(f"{req.name} missing")
                continue
            if not req.specifier.contains(have, prereleases=True):
                problems.append(f"{text} but {have}")
        print(f"{norm(dist.metadata['Name'])} {dist.version}: "
              f"{'; '.join(problems) if problems else 'requirements met'}")
        status |= bool(problems)
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("trace")
    t.add_argument("out", type=Path)
    t.add_argument("script")
    t.add_argument("args", nargs=argparse.REMAINDER)
    p = sub.add_parser("plan")
    p.add_argument("--device-list", type=Path, required=True)
    p.add_argument("--lock", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("traces", type=Path, nargs="+")
    c = sub.add_parser("check")
    c.add_argument("wheels", type=Path)
    c.add_argument("--device-list", type=Path, required=True)
    i = sub.add_parser("installed")
    i.add_argument("site", type=Path)
    args = parser.parse_args()
    if args.command == "installed":
        sys.exit(installed(args.site))
    if args.command == "trace":
        script_args = args.args[1:] if args.args[:1] == ["--"] else args.args
        trace(args.out, args.script, script_args)
    elif args.command == "plan":
        plan(args.device_list, args.lock, args.out, args.traces)
    else:
        sys.exit(check(args.wheels, args.device_list))


if __name__ == "__main__":
    main()
