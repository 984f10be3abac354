"""Downloads: mirror look-up, checksums (sha256 and md5), corrupted and truncated files, resume."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from geoplm import sources
from geoplm.errors import ChecksumError, DownloadError

AF_URL = "https://alphafold.ebi.ac.uk/files/AF-P04637-F1-model_v4.pdb"
AF_NAME = "AF-P04637-F1-model_v4.pdb"


@pytest.fixture
def af_file(shared_data) -> Path:
    return shared_data / "alphafold" / AF_NAME


def digest(path: Path, algorithm: str = "sha256") -> str:
    return hashlib.new(algorithm, path.read_bytes()).hexdigest()


def test_mirror_copy_is_verified_and_recorded(shared_data, af_file, tmp_path):
    dest = tmp_path / "raw" / AF_NAME
    got = sources.fetch(AF_URL, dest, f"sha256:{digest(af_file)}", mirror=shared_data)
    assert got.origin == "mirror"
    assert dest.read_bytes() == af_file.read_bytes()
    assert (tmp_path / "raw" / f"{AF_NAME}.sha256").read_text().split()[0] == digest(af_file)
    # second call: served from the cache, never from the mirror again
    again = sources.fetch(AF_URL, dest, f"sha256:{digest(af_file)}", mirror=shared_data)
    assert again.origin == "cache"


def test_md5_checksum_accepted(shared_data, af_file, tmp_path):
    got = sources.fetch(AF_URL, tmp_path / AF_NAME, f"md5:{digest(af_file, 'md5')}", mirror=shared_data)
    assert got.sha256 == digest(af_file)


def test_corrupted_mirror_file_is_refused_and_not_kept(af_file, tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    corrupted = bytearray(af_file.read_bytes())
    corrupted[1000] ^= 0xFF
    (mirror / AF_NAME).write_bytes(bytes(corrupted))
    dest = tmp_path / "raw" / AF_NAME
    with pytest.raises(ChecksumError) as error:
        sources.fetch(AF_URL, dest, f"sha256:{digest(af_file)}", mirror=mirror)
    assert AF_NAME in str(error.value) and digest(af_file) in str(error.value)
    assert not dest.exists() and not dest.with_name(AF_NAME + ".part").exists()


def test_truncated_download_is_refused(af_file, tmp_path):
    truncated = tmp_path / "upstream" / AF_NAME
    truncated.parent.mkdir()
    truncated.write_bytes(af_file.read_bytes()[:5000])
    dest = tmp_path / "raw" / AF_NAME
    with pytest.raises(ChecksumError, match="does not match"):
        sources.fetch(truncated.as_uri(), dest, f"sha256:{digest(af_file)}", mirror=None, retries=0)
    assert not dest.exists()


class _RangeServer:
    """A loopback HTTP server that honours Range requests and cuts its first response short."""

    def __init__(self, payload: bytes, cut_first_at: int):
        import http.server
        import threading

        served = self.served = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                start = 0
                if "Range" in self.headers:
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                body = payload[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not served:
                    body = body[:cut_first_at]  # the connection drops mid-transfer
                served.append((start, len(body)))
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/{AF_NAME}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_interrupted_download_resumes_with_range(af_file, tmp_path):
    payload = af_file.read_bytes()
    server = _RangeServer(payload, cut_first_at=10_000)
    try:
        dest = tmp_path / "raw" / AF_NAME
        got = sources.fetch(server.url, dest, f"sha256:{digest(af_file)}", retries=2, backoff=0, timeout=5)
    finally:
        server.close()
    assert got.origin == "network" and dest.read_bytes() == payload
    assert server.served[0] == (0, 10_000)
    assert server.served[1] == (10_000, len(payload) - 10_000)  # resumed, not restarted


def test_missing_everywhere_names_file_and_url(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    url = (tmp_path / "nowhere" / "AF-XXXX-F1-model_v4.pdb").as_uri()
    with pytest.raises(DownloadError) as error:
        sources.fetch(url, tmp_path / "raw" / "x.pdb", mirror=mirror, retries=1, backoff=0)
    assert "AF-XXXX-F1-model_v4.pdb" in str(error.value) and str(mirror) in str(error.value)


def test_edited_file_is_fetched_again(shared_data, af_file, tmp_path):
    dest = tmp_path / AF_NAME
    sources.fetch(AF_URL, dest, mirror=shared_data)
    dest.write_text("edited by hand")  # newer than its recorded digest
    got = sources.fetch(AF_URL, dest, mirror=shared_data)
    assert got.origin == "mirror" and dest.read_bytes() == af_file.read_bytes()


@pytest.mark.parametrize(
    "checksum",
    ["sha256:1234", "crc32:abcdef12", "md5:" + "g" * 32],
)
def test_malformed_checksum_is_rejected(checksum):
    with pytest.raises(DownloadError, match="checksum"):
        sources.parse_checksum(checksum)


def test_mirror_env_var_wins_and_must_exist(tmp_path, monkeypatch):
    monkeypatch.setenv(sources.MIRROR_ENV, str(tmp_path))
    assert sources.resolve_mirror("/elsewhere") == tmp_path.resolve()
    monkeypatch.setenv(sources.MIRROR_ENV, str(tmp_path / "missing"))
    with pytest.raises(DownloadError, match="GEOPLM_MIRROR"):
        sources.resolve_mirror(None)
    monkeypatch.delenv(sources.MIRROR_ENV)
    assert sources.resolve_mirror(str(tmp_path / "missing")) is None  # configured but absent: network


def test_unresolvable_host_is_not_retried(tmp_path):
    """Offline (the host name does not resolve), one attempt is made, not ``retries + 1``."""
    url = "https://geoplm-no-such-host.invalid/files/AF-XXXX-F1-model_v4.pdb"
    with pytest.raises(DownloadError) as error:
        sources.fetch(url, tmp_path / "x.pdb", retries=3, backoff=0)
    assert "attempt 1" in str(error.value) and "attempt 2" not in str(error.value)
