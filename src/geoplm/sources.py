"""Downloads: checksummed, resumable, retried, atomic, and served from a local mirror first.

A *source* is a list of files named by their canonical upstream URL (RCSB, AlphaFold DB, Zenodo,
fair-esm, ...). :func:`fetch` brings one file to ``resources/raw/...``:

1. a file already there whose recorded SHA-256 (the ``.sha256`` file beside it) matches is kept;
2. otherwise the *mirror*, a local directory searched recursively by file name, is used
   (the ``mirror`` config key, or the ``GEOPLM_MIRROR`` environment variable, which wins);
3. otherwise the URL is downloaded into ``<file>.part`` with HTTP ``Range`` requests, so an
   interrupted transfer resumes where it stopped, retried with exponential back-off.

The file is renamed into place only after its SHA-256 matched the expected digest (where one is
known); a mismatching or truncated file is deleted and never taken as done
(:class:`~geoplm.errors.ChecksumError`). The digest of every file is recorded beside it.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from geoplm.errors import ChecksumError, DownloadError

log = logging.getLogger(__name__)

MIRROR_ENV = "GEOPLM_MIRROR"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Fetched:
    """What :func:`fetch` did for one file."""

    path: Path
    url: str
    sha256: str
    bytes: int
    origin: str  # "cache", "mirror" or "network"


def hash_file(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file (``sha256`` or ``md5``), read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file."""
    return hash_file(path, "sha256")


def parse_checksum(checksum: str | None) -> tuple[str, str] | None:
    """Split ``"sha256:<hex>"`` / ``"md5:<hex>"`` (or a bare 64/32-digit hex) into (algorithm, hex).

    Upstream projects publish either (Zenodo and torchdrug give MD5, fair-esm none).

    Raises:
        DownloadError: the string is neither form.
    """
    if not checksum:
        return None
    algorithm, _, value = checksum.rpartition(":")
    value = value.strip().lower()
    if not algorithm:
        algorithm = {64: "sha256", 32: "md5"}.get(len(value), "")
    if algorithm not in ("sha256", "md5") or any(c not in "0123456789abcdef" for c in value):
        raise DownloadError(f"checksum {checksum!r}: expected 'sha256:<64 hex>' or 'md5:<32 hex>'")
    if len(value) != {"sha256": 64, "md5": 32}[algorithm]:
        raise DownloadError(f"checksum {checksum!r}: wrong length for {algorithm}")
    return algorithm, value


def file_name(url: str) -> str:
    """The file name a URL serves (last path segment, percent-decoded).

    Raises:
        DownloadError: the URL has no file name (ends in ``/``).
    """
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    if not name:
        raise DownloadError(f"{url}: URL names no file")
    return name


def resolve_mirror(configured: str | os.PathLike | None) -> Path | None:
    """The mirror directory in force: ``$GEOPLM_MIRROR`` if set, else ``configured``; None if neither.

    A configured mirror that does not exist (a clone without the shared data) is reported and the
    network used instead.

    Raises:
        DownloadError: the directory named by ``$GEOPLM_MIRROR`` does not exist.
    """
    from_env = os.environ.get(MIRROR_ENV)
    chosen = from_env or configured
    if not chosen:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        if from_env:
            raise DownloadError(f"mirror directory {path} (from ${MIRROR_ENV}) does not exist")
        log.warning("mirror directory %s (config key 'mirror') does not exist; using the network", path)
        return None
    return path.resolve()


@lru_cache(maxsize=8)
def _mirror_index(mirror: Path) -> dict[str, tuple[Path, ...]]:
    index: dict[str, list[Path]] = {}
    for root, dirs, files in os.walk(mirror):
        dirs.sort()
        for name in sorted(files):
            index.setdefault(name, []).append(Path(root) / name)
    return {name: tuple(paths) for name, paths in index.items()}


def find_in_mirror(mirror: Path, name: str, checksum: str | None = None) -> Path | None:
    """A file called ``name`` anywhere under ``mirror``; the one matching ``checksum`` if several.

    Returns None if the mirror holds no such file. Where none matches the checksum, the first is
    returned and :func:`fetch` reports the mismatch naming it.
    """
    candidates = _mirror_index(Path(mirror)).get(name, ())
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    expected = parse_checksum(checksum)
    if expected is not None:
        for candidate in candidates:
            if hash_file(candidate, expected[0]) == expected[1]:
                return candidate
    log.warning("mirror holds %d files named %s; using %s", len(candidates), name, candidates[0])
    return candidates[0]


def _recorded_digest(dest: Path) -> str | None:
    sidecar = dest.with_name(dest.name + ".sha256")
    if dest.exists() and sidecar.exists():
        recorded = sidecar.read_text().split()[0]
        if dest.stat().st_mtime <= sidecar.stat().st_mtime:
            return recorded
    return None


def _record_digest(dest: Path, digest: str) -> None:
    sidecar = dest.with_name(dest.name + ".sha256")
    tmp = sidecar.with_name(sidecar.name + ".part")
    tmp.write_text(f"{digest}  {dest.name}\n")
    os.replace(tmp, sidecar)


def _verify(part: Path, expected: tuple[str, str] | None, what: str) -> str:
    """Check ``part`` against ``expected`` (algorithm, hex); return its SHA-256. Deletes it on mismatch."""
    if expected is not None and expected[0] != "sha256":
        found = hash_file(part, expected[0])
        if found != expected[1]:
            part.unlink(missing_ok=True)
            raise ChecksumError(f"{what}: {expected[0]} {found} does not match the expected {expected[1]}")
    digest = sha256_file(part)
    if expected is not None and expected[0] == "sha256" and digest != expected[1]:
        part.unlink(missing_ok=True)
        raise ChecksumError(f"{what}: sha256 {digest} does not match the expected {expected[1]}")
    return digest


def _download(url: str, part: Path, timeout: float) -> None:
    """One attempt: append to ``part`` from its current size with an HTTP Range request."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "geoplm"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        status = getattr(response, "status", 200)
        mode = "ab" if offset and status == 206 else "wb"  # server ignored Range: start over
        announced = response.headers.get("Content-Length")
        received = 0
        with open(part, mode) as handle:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                handle.write(chunk)
                received += len(chunk)
        if announced is not None and received < int(announced):
            # the connection dropped: keep the bytes, the next attempt asks for the rest
            raise ConnectionError(f"transfer interrupted after {received} of {announced} bytes")


def _permanent(error: Exception) -> bool:
    """A failure that a retry cannot mend: the host name does not resolve (offline), a local
    ``file://`` that does not exist, or an HTTP 4xx other than 408/429."""
    if isinstance(error, urllib.error.HTTPError):
        return 400 <= error.code < 500 and error.code not in (408, 429)
    reason = getattr(error, "reason", None)
    return isinstance(reason, socket.gaierror | FileNotFoundError)


def fetch(
    url: str,
    dest: str | os.PathLike,
    checksum: str | None = None,
    mirror: str | os.PathLike | None = None,
    retries: int = 3,
    backoff: float = 2.0,
    timeout: float = 60.0,
    name: str | None = None,
) -> Fetched:
    """Bring the file at ``url`` to ``dest``, verified, from cache, mirror or network.

    Args:
        url: canonical upstream URL (``https://``, ``http://`` or ``file://``).
        dest: destination file path; its directory is created.
        checksum: expected digest as ``"sha256:<hex>"`` or ``"md5:<hex>"`` (what upstream
            publishes), or None where upstream publishes none; the SHA-256 found is recorded
            beside the file either way, and reported so the config can pin it.
        mirror: a directory searched by file name before the network (None: network only).
        retries: network attempts after the first, with ``backoff * 2**k`` seconds between them.
        timeout: socket timeout per attempt, in seconds.
        name: the file's upstream name, looked up in the mirror (default: the URL's last segment;
            set where that segment is not the file's name or not unique in a source).

    Returns:
        :class:`Fetched` with the path, digest, size and origin.

    Raises:
        ChecksumError: the mirror's or the downloaded file's digest differs from ``checksum``
            (the bad copy is removed; the message names the file and both digests).
        DownloadError: neither the mirror nor the network could provide the file. Permanent
            failures (host name not resolving, HTTP 404, a missing ``file://``) are not retried.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    expected = parse_checksum(checksum)
    recorded = _recorded_digest(dest)
    if recorded is not None:
        if expected is None or (expected[0] == "sha256" and recorded == expected[1]):
            return Fetched(dest, url, recorded, dest.stat().st_size, "cache")
        if expected[0] != "sha256" and hash_file(dest, expected[0]) == expected[1]:
            return Fetched(dest, url, recorded, dest.stat().st_size, "cache")

    part = dest.with_name(dest.name + ".part")
    name = name or file_name(url)
    mirror_path = Path(mirror) if mirror else None
    source = find_in_mirror(mirror_path, name, checksum) if mirror_path else None
    if source is not None:
        part.unlink(missing_ok=True)
        shutil.copyfile(source, part)
        digest = _verify(part, expected, f"{source} (mirror copy of {url})")
        os.replace(part, dest)
        _record_digest(dest, digest)
        return Fetched(dest, url, digest, dest.stat().st_size, "mirror")

    errors: list[str] = []
    downloaded = False
    for attempt in range(retries + 1):
        try:
            _download(url, part, timeout)
            downloaded = True
            break
        except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as error:
            errors.append(f"attempt {attempt + 1}: {error}")
            if _permanent(error):
                break  # offline, no such file, or refused: retrying cannot help
            if attempt < retries:
                time.sleep(backoff * 2**attempt)
    if not downloaded:
        where = f"not in mirror {mirror_path}" if mirror_path else "no mirror set"
        raise DownloadError(
            f"{name}: {where}, and {url} could not be downloaded ({'; '.join(errors)}). "
            f"Place the file in a mirror directory and set 'mirror' or ${MIRROR_ENV}."
        )
    digest = _verify(part, expected, f"{dest} (downloaded from {url})")
    os.replace(part, dest)
    _record_digest(dest, digest)
    return Fetched(dest, url, digest, dest.stat().st_size, "network")
