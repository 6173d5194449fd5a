"""spool.flush() is the CLI's engine and reports configuration trouble instead of raising."""

from __future__ import annotations

import pytest

import spool


def test_no_write_key_is_a_report_with_exit_1_and_the_fix(spool_dir: object) -> None:
    assert spool.append("server_start") is True
    report = spool.flush(endpoint="http://127.0.0.1:9")
    assert report.exit_code == 1
    assert "RS_SEGMENT_WRITE_KEY" in report.message
    assert report.to_json()["exit_code"] == 1


def test_plain_http_to_a_remote_host_is_refused_in_the_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RS_SEGMENT_WRITE_KEY", "k-library")
    assert spool.append("server_start") is True
    report = spool.flush(endpoint="http://192.0.2.7")
    assert (report.exit_code, report.sent, report.batches) == (1, 0, 0)
    assert "plain http" in report.message


def test_a_loose_spool_directory_is_refused_in_the_report(
    spool_dir: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pathlib import Path

    monkeypatch.setenv("RS_SEGMENT_WRITE_KEY", "k-library")
    assert spool.append("server_start") is True
    Path(str(spool_dir)).chmod(0o777)
    report = spool.flush(endpoint="http://127.0.0.1:9")
    assert report.exit_code == 1
    assert "chmod 700" in report.message


def test_a_netrc_entry_never_replaces_the_write_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object, scripted_server: object
) -> None:
    """requests applies ~/.netrc to a request without auth of its own: not to ours."""
    import base64
    from pathlib import Path

    netrc = Path(str(tmp_path)) / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password other-secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("RS_SEGMENT_WRITE_KEY", "k-netrc")
    assert spool.append("server_start") is True
    report = spool.flush(endpoint=scripted_server.url)  # type: ignore[attr-defined]
    assert report.exit_code == 0, report.message
    (request,) = scripted_server.requests  # type: ignore[attr-defined]
    expected = "Basic " + base64.b64encode(b"k-netrc:").decode()
    assert request.headers["Authorization"] == expected
