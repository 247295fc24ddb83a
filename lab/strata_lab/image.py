"""Build the lab's guest image: a Debian cloud kernel and a busybox initramfs.

The kernel comes from the package behind ``linux-image-cloud-amd64``; it is downloaded and
unpacked into the cache, never installed. The initramfs holds busybox-static, ``/init``
from ``lab/guest/init``, the virtio modules and ``strata-workload`` compiled from
``lab/guest/workload.c``.

    python3 -m strata_lab.image CACHE_DIR [--force]     (with PYTHONPATH=lab)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import json
import logging
import lzma
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .config import LabError
from .packages import ensure_packages

log = logging.getLogger(__name__)

GUEST_DIR = Path(__file__).resolve().parent.parent / "guest"
INIT_SCRIPT = GUEST_DIR / "init"
WORKLOAD_SOURCE = GUEST_DIR / "workload.c"

KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
# gcc -static needs libc6-dev's libc.a; busybox-static is the one busybox that runs without libc.
BUILD_PACKAGES = ("gcc", "libc6-dev", "busybox-static")
# Load order for /init: each module's dependencies come before it (checked against .modinfo).
MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_balloon",
    # The guest's disk, /dev/vda, for the disk workload.
    "virtio_blk",
)
MODULE_DIR = "lib/strata-modules"

KERNEL_NAME = "vmlinuz"
INITRD_NAME = "initrd.img"
STAMP_NAME = "image.json"
DEB_DIR = "debs"
BUILD_PREFIX = ".build-"


class ImageBuildError(LabError):
    """The guest image could not be built; the message says which step and why."""


@dataclasses.dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path
    kernel_version: str


def build_image(cache_dir: Path, force: bool = False) -> GuestImage:
    """Return the guest image in ``cache_dir``, building it unless an up-to-date one is there."""
    cache_dir = cache_dir.absolute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    inputs = _inputs_digest()
    with _locked(cache_dir):
        if not force:
            cached = _cached_image(cache_dir, inputs)
            if cached is not None:
                return cached
        return _build(cache_dir, inputs, force)


def _inputs_digest() -> str:
    # The builder itself is an input: it decides the module list and the initramfs layout.
    digest = hashlib.sha256()
    for path in (INIT_SCRIPT, WORKLOAD_SOURCE, Path(__file__).resolve()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    # Parallel test runs share one cache; the second waits and then finds the image built.
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _cached_image(cache_dir: Path, inputs: str) -> GuestImage | None:
    try:
        stamp = json.loads((cache_dir / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None
    image = GuestImage(
        kernel=cache_dir / KERNEL_NAME,
        initrd=cache_dir / INITRD_NAME,
        kernel_version=str(stamp.get("kernel_version", "")),
    )
    if stamp.get("inputs") != inputs or not image.kernel_version:
        return None
    if not (image.kernel.is_file() and image.initrd.is_file()):
        return None
    return image


def _build(cache_dir: Path, inputs: str, force: bool) -> GuestImage:
    for leftover in cache_dir.glob(BUILD_PREFIX + "*"):
        shutil.rmtree(leftover, ignore_errors=True)

    ensure_packages(BUILD_PACKAGES)
    apt = _Apt()
    package = _kernel_package(apt)
    deb = _download_deb(apt, package, cache_dir / DEB_DIR, force)

    with tempfile.TemporaryDirectory(prefix=BUILD_PREFIX, dir=cache_dir) as tmp_name:
        tmp = Path(tmp_name)
        log.info("unpacking %s", deb.name)
        _run(["dpkg", "-x", str(deb), str(tmp / "kernel")])
        version, vmlinuz = _find_kernel(tmp / "kernel")
        modules = _collect_modules(tmp / "kernel", version)
        workload = _compile_workload(tmp)
        initrd = _initramfs(_busybox_path(), workload, modules)
        # No stamp while the files change: an interrupted build is never taken for a good one.
        (cache_dir / STAMP_NAME).unlink(missing_ok=True)
        _write_atomic(cache_dir / KERNEL_NAME, vmlinuz.read_bytes())
        _write_atomic(cache_dir / INITRD_NAME, initrd)

    stamp = {"inputs": inputs, "kernel_version": version, "kernel_package": deb.name}
    _write_atomic(cache_dir / STAMP_NAME, (json.dumps(stamp, indent=2) + "\n").encode())
    log.info("guest image ready: kernel %s, initrd %d KiB", version, len(initrd) // 1024)
    return GuestImage(cache_dir / KERNEL_NAME, cache_dir / INITRD_NAME, version)


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    env = {**os.environ, "LC_ALL": "C"}  # apt-cache output is parsed: no translations
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise ImageBuildError(f"{cmd[0]} not found: {exc}") from exc
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip().splitlines()
        tail = "\n".join(output[-15:])
        raise ImageBuildError(f"{' '.join(cmd)} failed with exit {proc.returncode}:\n{tail}")
    return proc.stdout


class _Apt:
    """apt commands that retry once after ``apt-get update`` (stale or missing lists)."""

    def __init__(self) -> None:
        self._updated = False

    def run(self, cmd: list[str], cwd: Path | None = None) -> str:
        try:
            return _run(cmd, cwd)
        except ImageBuildError:
            if self._updated:
                raise
            log.info("%s failed; running apt-get update and retrying", " ".join(cmd[:2]))
            _run(["apt-get", "update", "-q"])
            self._updated = True
            return _run(cmd, cwd)


def _kernel_package(apt: _Apt) -> str:
    output = apt.run(["apt-cache", "depends", KERNEL_METAPACKAGE])
    match = re.search(r"^\s*\|?Depends:\s*(linux-image-\S+)", output, re.MULTILINE)
    if match is None:
        raise ImageBuildError(f"no linux-image dependency of {KERNEL_METAPACKAGE}:\n{output}")
    return match.group(1)


def _download_deb(apt: _Apt, package: str, deb_dir: Path, force: bool) -> Path:
    deb_dir.mkdir(exist_ok=True)
    existing = sorted(deb_dir.glob(f"{package}_*.deb"))
    if existing and not force:
        return existing[-1]
    log.info("downloading %s", package)
    # apt-get download writes into its working directory; a scratch one keeps partial files out
    # (and, named like a build directory, is swept up by the next build if this one is killed).
    with tempfile.TemporaryDirectory(prefix=BUILD_PREFIX, dir=deb_dir.parent) as tmp_name:
        apt.run(["apt-get", "download", "-q", package], cwd=Path(tmp_name))
        fetched = list(Path(tmp_name).glob(f"{package}_*.deb"))
        if len(fetched) != 1:
            raise ImageBuildError(f"apt-get download {package} produced {fetched}")
        deb = deb_dir / fetched[0].name
        os.replace(fetched[0], deb)
    for old in deb_dir.glob("*.deb"):
        if old != deb:
            old.unlink()
    return deb


def _find_kernel(root: Path) -> tuple[str, Path]:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise ImageBuildError(f"expected one boot/vmlinuz-* in the kernel package, found {kernels}")
    return kernels[0].name.removeprefix("vmlinuz-"), kernels[0]


def _collect_modules(root: Path, version: str) -> dict[str, bytes]:
    """Uncompressed .ko contents for the MODULES not built into the kernel."""
    # Debian 12 ships /lib/modules; merged-/usr packages ship /usr/lib/modules.
    candidates = [root / "lib/modules" / version, root / "usr/lib/modules" / version]
    moddir = next((d for d in candidates if d.is_dir()), None)
    if moddir is None:
        raise ImageBuildError(f"no modules directory for {version} in the kernel package")
    builtin = {
        _module_name(Path(line)) for line in (moddir / "modules.builtin").read_text().split()
    }
    files = {_module_name(p): p for p in moddir.rglob("*.ko*")}

    modules: dict[str, bytes] = {}
    available = set(builtin)
    for name in MODULES:
        if name in builtin:
            continue
        if name not in files:
            raise ImageBuildError(f"kernel {version} has no module {name}")
        data = _read_module(files[name])
        needs = [dep for dep in _module_depends(data) if dep not in available]
        if needs:
            raise ImageBuildError(
                f"kernel {version}: {name} needs {', '.join(needs)} loaded before it; "
                "fix MODULES in strata_lab/image.py"
            )
        available.add(name)
        modules[name] = data
    log.info("modules: %s", " ".join(modules) or "all built in")
    return modules


def _module_name(path: Path) -> str:
    # The kernel treats '-' and '_' in module names alike; file names use either.
    return path.name.split(".ko")[0].replace("-", "_")


def _read_module(path: Path) -> bytes:
    # Decompress here: busybox insmod and the kernel's own decompression both vary by build.
    data = path.read_bytes()
    if path.name.endswith(".ko"):
        return data
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        if shutil.which("zstd") is None:
            raise ImageBuildError(f"{path.name} is zstd-compressed; install the zstd package")
        proc = subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=False)
        if proc.returncode != 0:
            raise ImageBuildError(f"zstd -dc {path.name} failed: {proc.stderr.decode().strip()}")
        return proc.stdout
    raise ImageBuildError(f"unknown module format: {path.name}")


def _module_depends(data: bytes) -> list[str]:
    match = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", data)
    if match is None or not match.group(1):
        return []
    return [dep.replace("-", "_") for dep in match.group(1).decode().split(",")]


def _compile_workload(tmp: Path) -> bytes:
    out = tmp / "strata-workload"
    log.info("compiling %s", WORKLOAD_SOURCE.name)
    _run(["gcc", "-static", "-O2", "-Wall", "-Wextra", "-o", str(out), str(WORKLOAD_SOURCE)])
    return out.read_bytes()


def _busybox_path() -> Path:
    listing = _run(["dpkg-query", "-L", "busybox-static"]).split()
    for entry in listing:
        if entry.endswith("/bin/busybox"):
            return Path(entry)
    raise ImageBuildError("busybox-static does not ship a bin/busybox")


def _initramfs(busybox: Path, workload: bytes, modules: dict[str, bytes]) -> bytes:
    applets = _run([str(busybox), "--list"]).split()
    dirs = ["bin", "dev", "etc", "lib", MODULE_DIR, "proc", "root", "run", "sys", "tmp"]
    entries: list[_Entry] = [_Entry(d, stat.S_IFDIR | 0o755) for d in dirs]
    # The kernel opens /dev/console for /init's stdio before /init can mount devtmpfs.
    entries.append(_Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    entries.append(_Entry("init", stat.S_IFREG | 0o755, INIT_SCRIPT.read_bytes()))
    entries.append(_Entry("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes()))
    entries.extend(
        _Entry(f"bin/{applet}", stat.S_IFLNK | 0o777, b"busybox")
        for applet in sorted(set(applets) - {"busybox"})
    )
    entries.append(_Entry("bin/strata-workload", stat.S_IFREG | 0o755, workload))
    order = "".join(f"{name}\n" for name in MODULES).encode()
    entries.append(_Entry(f"{MODULE_DIR}/order", stat.S_IFREG | 0o644, order))
    entries.extend(
        _Entry(f"{MODULE_DIR}/{name}.ko", stat.S_IFREG | 0o644, data)
        for name, data in modules.items()
    )
    # mtime=0 and fixed owners keep the initrd byte-identical for identical inputs.
    return gzip.compress(_newc(entries), compresslevel=9, mtime=0)


@dataclasses.dataclass(frozen=True)
class _Entry:
    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _newc(entries: list[_Entry]) -> bytes:
    """A cpio archive in the "newc" format the kernel unpacks, all entries owned by root."""
    out = bytearray()

    def pad() -> None:
        out.extend(b"\0" * (-len(out) % 4))

    for ino, entry in enumerate([*entries, _Entry("TRAILER!!!", 0)], start=1):
        name = entry.name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        fields = (
            ino, entry.mode, 0, 0, nlink, 0, len(entry.data),
            0, 0, entry.rdev[0], entry.rdev[1], len(name), 0,
        )  # fmt: skip
        out.extend(b"070701" + b"".join(b"%08x" % field for field in fields) + name)
        pad()
        out.extend(entry.data)
        pad()
    return bytes(out)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m strata_lab.image", description="Build the strata lab guest image."
    )
    parser.add_argument("cache_dir", type=Path)
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        image = build_image(args.cache_dir, force=args.force)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"kernel={image.kernel}")
    print(f"initrd={image.initrd}")
    print(f"kernel_version={image.kernel_version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
