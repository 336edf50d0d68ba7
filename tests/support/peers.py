"""Real network peers for the tests and benchmarks: ports, processes, DCMTK, loopback shim.

DCMTK 3.6.7 servers and Orthanc 1.10 listen on 0.0.0.0 with no option to change it
(../shared/PEERS.md); :func:`build_bind_shim` compiles ``bind_loopback.c``, which, preloaded
(``LD_PRELOAD``), turns a wildcard ``bind()`` into a loopback one.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

#: Source of the LD_PRELOAD shim that keeps DCMTK and Orthanc servers on 127.0.0.1.
BIND_SHIM_SOURCE = Path(__file__).with_name("bind_loopback.c")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(
    port: int, process: subprocess.Popen[bytes] | None = None, timeout: float = 15.0
) -> None:
    """Wait until something accepts connections on 127.0.0.1:`port` (a server started).

    Raises ``RuntimeError`` when `process` exits first or nothing listens by `timeout`.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)  # polling interval, not a synchronisation delay
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Terminate a server started by a test, killing it when it does not stop in time."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _is_script(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == b"#!"


def find_dcmtk(name: str) -> str | None:
    """Path of DCMTK's program `name` (e.g. ``storescu``), or ``None`` when not installed.

    pynetdicom installs Python scripts of the same names, which may come first on PATH:
    each candidate is asked for its version and only DCMTK's binary is returned.
    """
    folders = os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin"]
    candidates = [
        Path(folder) / name
        for folder in folders
        if (Path(folder) / name).is_file() and os.access(Path(folder) / name, os.X_OK)
    ]
    # Binaries first: probing a pynetdicom or pyenv script starts a Python (about 1 s each).
    for candidate in sorted(candidates, key=_is_script):
        probe = subprocess.run(
            [str(candidate), "--version"], capture_output=True, text=True, timeout=10
        )
        if "dcmtk" in (probe.stdout + probe.stderr).lower():
            return str(candidate)
    return None


def build_bind_shim(folder: Path) -> Path:
    """Compile ``bind_loopback.c`` into `folder`; returns the shared library to preload.

    DCMTK 3.6.7 servers bind 0.0.0.0 and have no option to change it (PEERS.md); with
    ``LD_PRELOAD`` set to the returned library a wildcard bind() becomes a loopback one.

    Raises ``RuntimeError`` (naming what to install) when no C compiler is found or the
    build fails.
    """
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError(
            "a C compiler is needed to build the loopback bind() shim for the DCMTK "
            "servers; apt-get install gcc"
        )
    library = folder / "bind_loopback.so"
    built = subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(BIND_SHIM_SOURCE),
         "-ldl"],
        capture_output=True, text=True, timeout=60,
    )
    if built.returncode != 0:
        raise RuntimeError(f"cannot build the bind() shim: {built.stderr}")
    return library
