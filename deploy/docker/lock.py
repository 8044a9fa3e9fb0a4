"""Regenerate the image lock files (versions and sha256 hashes) from pyproject's pinned dependencies.

    python deploy/docker/lock.py                  # resolve again, rewrite requirements-{proxy,agent}.lock
    python deploy/docker/lock.py --keep-versions  # same versions, fetch their hashes again
    python deploy/docker/lock.py --check          # exit 1 if a lock disagrees with pyproject or lacks hashes

pyproject pins the direct dependencies; the locks add every transitive one at the version pip
resolves today for Linux / CPython 3.11 (the image's platform), plus the build backend
(setuptools, from [build-system]) so the project itself installs without fetching anything.
Each version carries the sha256 of every wheel PyPI has for it that fits Linux CPython 3.11
(x86_64 and aarch64), read from PyPI's JSON simple API (PEP 691), the same source pip-compile
--generate-hashes uses. The Dockerfile installs a lock with --require-hashes --only-binary, so a
changed or substituted file fails the build; then the project with --no-deps --no-build-isolation
--no-index, then runs `pip check`, so a lock that drifted from pyproject fails the build too.
"""
from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
import tempfile
import tomllib
import urllib.request

from packaging import tags
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
TARGETS = {"proxy": [], "agent": ["agent"]}
INDEX = "https://pypi.org/simple"
# wheel tags the image's pip may choose: CPython 3.11 on glibc <= 2.36 (Debian bookworm), either
# architecture; the same tag sets pip derives for the running interpreter (packaging.tags)
_PLATFORMS = [p for arch in ("x86_64", "aarch64") for p in
              [f"manylinux_2_{minor}_{arch}" for minor in range(36, 16, -1)] + [f"manylinux2014_{arch}", f"linux_{arch}"]]
SUPPORTED = frozenset([*tags.cpython_tags((3, 11), abis=["cp311"], platforms=_PLATFORMS),
                       *tags.compatible_tags((3, 11), interpreter="cp311", platforms=_PLATFORMS)])


def pinned(extras: list[str]) -> list[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return sorted(set(reqs), key=str.lower)


def build_requires() -> list[str]:
    return list(tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"])


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: pathlib.Path) -> dict[str, str]:
    """name → version; hash lines and continuations are skipped."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip().rstrip("\\").strip()
        if line and not line.startswith("--"):
            name, _, version = line.partition("==")
            out[norm(name)] = version.strip()
    return out


def hashed(path: pathlib.Path) -> dict[str, int]:
    """name → number of --hash options it carries."""
    out, cur = {}, None
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("--hash="):
            out[cur] = out.get(cur, 0) + 1
        else:
            cur = norm(line.partition("==")[0])
            out.setdefault(cur, 0)
    return out


def resolve(reqs: list[str]) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        report = pathlib.Path(tmp) / "report.json"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
             "--only-binary=:all:", "--python-version", "3.11", "--platform", "manylinux2014_x86_64",
             "--target", tmp + "/t", "--report", str(report), *reqs],
            check=True,
        )
        data = json.loads(report.read_text())
    return {norm(i["metadata"]["name"]): i["metadata"]["version"] for i in data["install"]}


def wheel_hashes(name: str, version: str) -> list[str]:
    req = urllib.request.Request(f"{INDEX}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        files = json.loads(resp.read())["files"]
    out = set()
    for f in files:
        if not f["filename"].endswith(".whl") or f.get("yanked"):
            continue
        try:
            wname, wversion, _, wtags = parse_wheel_filename(f["filename"])
        except InvalidWheelFilename:   # old uploads with non-standard names: never this version's
            continue
        if norm(wname) != name or str(wversion) != version:
            continue
        if not wtags.isdisjoint(SUPPORTED):
            out.add(f["hashes"]["sha256"])
    if not out:
        raise SystemExit(f"{name}=={version}: no wheel for Linux CPython 3.11 on {INDEX}")
    return sorted(out)


def write_lock(target: str, versions: dict[str, str]) -> None:
    lines = [f"# Generated by deploy/docker/lock.py from pyproject.toml ({target} image). Do not edit.",
             "# Install with: pip install --require-hashes --only-binary=:all: -r this-file"]
    for name, version in sorted(versions.items()):
        lines.append(f"{name}=={version} \\")
        hashes = wheel_hashes(name, version)
        lines += [f"    --hash=sha256:{h}" + (" \\" if i < len(hashes) - 1 else "") for i, h in enumerate(hashes)]
    (HERE / f"requirements-{target}.lock").write_text("\n".join(lines) + "\n")
    print(f"requirements-{target}.lock: {len(versions)} packages")


def problems(target: str) -> list[str]:
    path = HERE / f"requirements-{target}.lock"
    lock, hashes = read_lock(path), hashed(path)
    out = []
    for req in pinned(TARGETS[target]):
        name, _, version = req.partition("==")
        name = norm(name.split("[", 1)[0])
        if lock.get(name) != version:
            out.append(f"requirements-{target}.lock: {name} is {lock.get(name)!r}, pyproject pins {version!r}")
    for req in build_requires():
        name = norm(re.split(r"[<>=!~ \[]", req, maxsplit=1)[0])
        if name not in lock:
            out.append(f"requirements-{target}.lock: the build backend {name} ({req}) is missing")
    out += [f"requirements-{target}.lock: {n} has no --hash" for n, k in hashes.items() if k == 0]
    return out


def main() -> int:
    if "--check" in sys.argv:
        errs = [p for t in TARGETS for p in problems(t)]
        print("\n".join(errs) or "locks agree with pyproject and carry hashes")
        return 1 if errs else 0
    for target, extras in TARGETS.items():
        if "--keep-versions" in sys.argv:
            versions = read_lock(HERE / f"requirements-{target}.lock")
            missing = [r for r in build_requires() if norm(re.split(r"[<>=!~ \[]", r, maxsplit=1)[0]) not in versions]
            if missing:
                versions.update(resolve(missing))
        else:
            versions = resolve(pinned(extras) + build_requires())
        write_lock(target, versions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
