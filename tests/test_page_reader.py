"""Page fetching against a local site of ordinary and hostile pages. Only 127.0.0.1 is ever
contacted: the private and metadata addresses in redirects are refused before connecting."""

from __future__ import annotations

import time

import pytest
from asearcher.exceptions import (
    ConfigError,
    PageRefusedError,
    RequestRejectedError,
    ToolTimeoutError,
)
from asearcher.tools import PageReader, Toolbox
from conftest import SerperHandler  # noqa: F401  (keeps fixture module imported)


@pytest.fixture(scope="module")
def reader():
    return PageReader(allowed_networks=["127.0.0.1"], timeout=1.0, max_bytes=1 << 20, retries=0)


def test_article_becomes_readable_text(reader, site):
    page = reader.read(f"{site}/article")
    assert page.title == "The Glass River"
    assert "flows for 412 kilometres" in page.contents
    assert "tracking" not in page.contents and "color: red" not in page.contents
    assert page.chunks(chunk_chars=100)[0].startswith("The Glass River")


def test_plain_text_and_redirects(reader, site):
    assert reader.read(f"{site}/plain").contents == "just some plain text"
    page = reader.read(f"{site}/to-article")
    assert page.url == f"{site}/article" and "412 kilometres" in page.contents


def test_default_policy_refuses_loopback(site):
    default = PageReader()
    with pytest.raises(PageRefusedError, match="loopback"):
        default.read(f"{site}/plain")
    port = site.rsplit(":", 1)[1]
    with pytest.raises(PageRefusedError):
        default.read(f"http://localhost:{port}/plain")
    with pytest.raises(PageRefusedError, match="scheme"):
        default.read("file:///etc/passwd")


@pytest.mark.parametrize("path", ["/to-metadata", "/to-private"])
def test_redirects_into_private_space_are_refused(reader, site, path):
    with pytest.raises(PageRefusedError, match="169.254.169.254|10.1.2.3"):
        reader.read(f"{site}{path}")


def test_size_caps_hold_for_huge_pages_and_gzip_bombs(reader, site):
    for path in ("/huge", "/bomb"):
        started = time.monotonic()
        with pytest.raises(PageRefusedError, match="max_bytes|larger"):
            reader.read(f"{site}{path}")
        assert time.monotonic() - started < 10


def test_binary_content_is_refused(reader, site):
    with pytest.raises(PageRefusedError, match="image/png"):
        reader.read(f"{site}/binary")


def test_slow_pages_time_out(reader, site):
    with pytest.raises(ToolTimeoutError):
        reader.read(f"{site}/slow")


def test_missing_page_is_a_rejection(reader, site):
    with pytest.raises(RequestRejectedError, match="404"):
        reader.read(f"{site}/nope")


def test_jina_mode_sends_key_from_environment(site, monkeypatch):
    monkeypatch.setenv("JINA_API_KEY", "jina-secret")
    jina = PageReader(mode="jina", reader_url=f"{site}/reader")
    page = jina.read("https://example.org/some/page")
    assert page.contents == "READER saw https://example.org/some/page with auth=Bearer jina-secret"
    with pytest.raises(PageRefusedError, match="169.254.169.254"):
        jina.read("http://169.254.169.254/latest/meta-data/")
    with pytest.raises(ConfigError, match="reader_url"):
        PageReader(mode="jina")


def test_toolbox_access_renders_chunks(reader, site, sample_index):
    box = Toolbox(sample_index, pages=reader, chunk_chars=120)
    out = box.access(f"{site}/article")
    assert out.text.startswith(">>>> Page 1 >>>>\n\n")
    assert len(out.chunks) >= 2 and all(len(c) <= 120 for c in out.chunks)
    with pytest.raises(PageRefusedError):
        Toolbox(sample_index, pages=PageReader()).access(f"{site}/article")
