"""Downloads: checksummed, resumable, retried, atomic, and served from a local mirror first.

A *source* is a list of files named by their canonical upstream URL (RCSB, AlphaFold DB, Zenodo,
fair-esm, ...). :func:`fetch` brings one file to ``resources/raw/...``:

1. a file already there is kept when it is still the file that was verified: the ``.sha256`` file
   beside it records its SHA-256 with its size and modification time (a cheap stamp); when the
   stamp differs the file is hashed again, and a file whose digest changed, or that does not match
   the expected checksum, is fetched again (:func:`cached_digest`);
2. otherwise the *mirror*, a local directory searched recursively by file name, is used
   (the ``mirror`` config key, or the ``GEOPLM_MIRROR`` environment variable, which wins);
3. otherwise the URL is downloaded into ``<file>.part`` with HTTP ``Range`` requests, so an
   interrupted transfer resumes where it stopped, retried with exponential back-off.

The file is renamed into place only after its digest matched the expected one; a mismatching or
truncated file is deleted and never taken as done (:class:`~geoplm.errors.ChecksumError`, naming the
file and both digests). Every file is pinned: by the checksum its source publishes (or the config
gives), else by the SHA-256 of its first verified copy, kept in a lock file the workflow writes and a
user can review and commit (:class:`ChecksumLock`, ``checksums.lock.tsv``); later copies must match it.
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


def _sidecar(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def _read_sidecar(dest: Path) -> dict | None:
    """The record beside a cached file: ``{"sha256", "size", "mtime_ns", "verified": set}``, or None."""
    sidecar = _sidecar(dest)
    if not (dest.exists() and sidecar.exists()):
        return None
    lines = sidecar.read_text().splitlines()
    if not lines or not lines[0].split():
        return None
    info: dict = {"sha256": lines[0].split()[0], "size": None, "mtime_ns": None, "verified": set()}
    for line in lines[1:]:
        parts = line.split()
        if len(parts) == 4 and parts[0] == "size" and parts[2] == "mtime_ns":
            info["size"], info["mtime_ns"] = int(parts[1]), int(parts[3])
        elif len(parts) == 2 and parts[0] == "verified":
            info["verified"].add(parts[1])
    return info


def _record_digest(dest: Path, digest: str, verified: set[str] | frozenset[str] = frozenset()) -> None:
    """Write ``<dest>.sha256``: the SHA-256 and name (``sha256sum`` format) on the first line, then the
    size / mtime stamp and the checksums the file was verified against."""
    from geoplm import atomic

    stat = dest.stat()
    lines = [f"{digest}  {dest.name}", f"size {stat.st_size} mtime_ns {stat.st_mtime_ns}"]
    lines += [f"verified {checksum}" for checksum in sorted(verified)]
    atomic.write_text(_sidecar(dest), "\n".join(lines) + "\n")


def cached_digest(dest: str | os.PathLike, checksum: str | None = None) -> str | None:
    """The SHA-256 of a previously fetched file if it can be used as it is, else None (fetch it again).

    The file is used when its size and modification time are those recorded at verification, or, when
    they are not, when its SHA-256 still equals the recorded one (the stamp is then renewed); and when it
    matches ``checksum`` (an MD5 is computed once and remembered). A file that changed since it was
    verified, or that does not match ``checksum``, is reported (warning) and removed with its record.
    """
    dest = Path(dest)
    info = _read_sidecar(dest)
    if info is None:
        return None
    stat = dest.stat()
    digest, verified = info["sha256"], set(info["verified"])
    renew = False
    if (info["size"], info["mtime_ns"]) != (stat.st_size, stat.st_mtime_ns):
        found = sha256_file(dest)
        if found != digest:
            log.warning(
                "%s changed since it was verified (sha256 %s, recorded %s): fetching it again", dest, found, digest
            )
            _discard(dest)
            return None
        renew = True
    expected = parse_checksum(checksum)
    if expected is not None:
        pinned = f"{expected[0]}:{expected[1]}"
        if expected[0] == "sha256":
            ok = digest == expected[1]
        elif pinned in verified:
            ok = True
        else:
            ok = hash_file(dest, expected[0]) == expected[1]
            renew = renew or ok
        if not ok:
            log.warning("%s (sha256 %s) does not match its checksum %s: fetching it again", dest, digest, pinned)
            _discard(dest)
            return None
        verified.add(pinned)
    if renew:
        _record_digest(dest, digest, verified)
    return digest


def _discard(dest: Path) -> None:
    dest.unlink(missing_ok=True)
    _sidecar(dest).unlink(missing_ok=True)


#: Columns of the checksum lock file (:class:`ChecksumLock`).
LOCK_COLUMNS: tuple[str, ...] = ("url", "checksum", "file", "recorded")


class ChecksumLock:
    """The lock file that pins files whose source publishes no checksum: the SHA-256 of the first verified
    copy of each URL (trust on first use), which every later copy must match.

    The file (default ``checksums.lock.tsv`` in the workflow directory, config key ``checksum_lock``) is a
    TSV with the columns :data:`LOCK_COLUMNS` (url, ``sha256:<hex>``, the file name, the UTC time it was
    recorded), sorted by URL, for a user to review and commit. :meth:`fetch` is :func:`fetch` with the lock
    and :meth:`save` writes the pins it made; jobs that download in parallel merge their entries under an
    exclusive ``flock`` on ``<lock>.lck``; the file is rewritten atomically.

    Args:
        path: the lock file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._pins: dict[str, str] | None = None
        self._new: dict[str, tuple[str, str]] = {}

    def _lines(self) -> dict[str, tuple[int, str]]:
        """URL -> (line number, line) of the file's entries (empty when the file does not exist)."""
        if not self.path.exists():
            return {}
        lines = {}
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            if number > 1 and line.strip() and not line.startswith("#"):
                lines[line.split("\t", 1)[0]] = (number, line)
        return lines

    def read(self) -> dict[str, str]:
        """URL -> ``sha256:<hex>`` (empty when the file does not exist).

        Raises:
            DownloadError: a malformed line (the message names the file and line).
        """
        pinned: dict[str, str] = {}
        for url, (number, line) in self._lines().items():
            fields = line.split("\t")
            try:
                parse_checksum(fields[1])
            except (IndexError, DownloadError) as error:
                raise DownloadError(f"{self.path}:{number}: not 'url<TAB>sha256:<hex>...' ({error})") from None
            pinned[url] = fields[1]
        return pinned

    def fetch(
        self, url: str, dest: str | os.PathLike, checksum: str | None = None, mirror=None, name: str | None = None
    ) -> Fetched:
        """:func:`fetch`, a file without ``checksum`` checked against its pin (or pinned by :meth:`save`).

        Raises:
            ChecksumError: as :func:`fetch`; for a pinned file the message says where the pin is.
            DownloadError: as :func:`fetch`, or a malformed lock file.
        """
        if self._pins is None:
            self._pins = self.read()
        pinned = None if checksum else self._pins.get(url)
        try:
            got = fetch(url, dest, checksum or pinned, mirror, name=name)
        except ChecksumError as error:
            if pinned is None:
                raise
            raise ChecksumError(
                f"{error} (pinned by {self.path} when it was first downloaded: if upstream replaced the file on "
                f"purpose, delete its line there)"
            ) from error
        if not checksum and pinned is None:
            self._new[url] = (f"sha256:{got.sha256}", Path(dest).name)
        return got

    def save(self) -> int:
        """Add the pins :meth:`fetch` made to the file (entries already there are kept); return how many."""
        count = len(self._new)
        self.record(self._new)
        self._new = {}
        return count

    def record(self, entries: dict[str, tuple[str, str]]) -> None:
        """Add ``{url: (checksum, file name)}`` to the lock file (entries already there are kept as they are)."""
        if not entries:
            return
        import fcntl
        from datetime import UTC, datetime

        from geoplm import atomic

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lck"), "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            rows = {url: line for url, (_, line) in self._lines().items()}
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            for url, (checksum, name) in entries.items():
                rows.setdefault(url, "\t".join((url, checksum, name, now)))
            text = "\t".join(LOCK_COLUMNS) + "\n" + "".join(rows[url] + "\n" for url in sorted(rows))
            atomic.write_text(self.path, text)


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
    recorded = cached_digest(dest, checksum)
    if recorded is not None:
        return Fetched(dest, url, recorded, dest.stat().st_size, "cache")
    verified = frozenset() if expected is None else frozenset({f"{expected[0]}:{expected[1]}"})

    part = dest.with_name(dest.name + ".part")
    name = name or file_name(url)
    mirror_path = Path(mirror) if mirror else None
    source = find_in_mirror(mirror_path, name, checksum) if mirror_path else None
    if source is not None:
        part.unlink(missing_ok=True)
        shutil.copyfile(source, part)
        digest = _verify(part, expected, f"{source} (mirror copy of {url})")
        os.replace(part, dest)
        _record_digest(dest, digest, verified)
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
    _record_digest(dest, digest, verified)
    return Fetched(dest, url, digest, dest.stat().st_size, "network")
