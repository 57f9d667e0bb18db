"""Web search over the Serper protocol, against a local server speaking it."""

from __future__ import annotations

import logging

import pytest
from asearcher.exceptions import MissingSecretError, RequestRejectedError
from asearcher.tools import Toolbox, WebSearch
from conftest import SerperHandler


def test_search_speaks_serper(serper_server, monkeypatch):
    monkeypatch.setenv("SERPER_API_KEY", "test-key-123")
    docs = WebSearch(base_url=serper_server).search("glass river", k=3)
    assert [d.url for d in docs] == [f"https://example.org/{i}" for i in range(3)]
    assert (
        docs[0].title == "glass river result 0" and docs[0].text == "Snippet 0 about glass river."
    )
    req = SerperHandler.requests[-1]
    assert req == {"path": "/search", "key": "test-key-123", "body": {"q": "glass river", "num": 3}}


def test_key_comes_from_the_named_variable(serper_server, monkeypatch):
    monkeypatch.delenv("MY_SERPER_KEY", raising=False)
    with pytest.raises(MissingSecretError, match="MY_SERPER_KEY"):
        WebSearch(base_url=serper_server, api_key_env="MY_SERPER_KEY")
    monkeypatch.setenv("MY_SERPER_KEY", "wrong")
    with pytest.raises(RequestRejectedError, match="403"):
        WebSearch(base_url=serper_server, api_key_env="MY_SERPER_KEY").search("x")


def test_transient_failures_are_retried_and_key_never_logged(serper_server, monkeypatch, caplog):
    monkeypatch.setenv("SERPER_API_KEY", "test-key-123")
    SerperHandler.fail_next = 2
    with caplog.at_level(logging.DEBUG, logger="asearcher"):
        docs = WebSearch(base_url=serper_server, retries=3, backoff=0.01).search("q", k=2)
    assert len(docs) == 2 and len(SerperHandler.requests) == 3
    assert any("retrying" in r.getMessage() for r in caplog.records)
    assert not any("test-key-123" in r.getMessage() for r in caplog.records)


def test_toolbox_renders_web_results(serper_server, monkeypatch):
    monkeypatch.setenv("SERPER_API_KEY", "test-key-123")
    out = Toolbox(WebSearch(base_url=serper_server), top_k=2).search("orvend valley")
    assert out.text.startswith("[Doc 1](https://example.org/0):\n")
    assert "Snippet 1 about orvend valley." in out.text
