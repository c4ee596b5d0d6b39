"""Fixtures shared by the LLM judge tests: a private judge cache and fake OpenAI-compatible servers."""

import pytest

from fake_judge_server import FakeJudgeServer


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """The judge CLI's default cache lives under $HALIGN_CACHE: never the user's own cache in tests."""
    monkeypatch.setenv("HALIGN_CACHE", str(tmp_path / "halign_cache"))
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture
def server():
    """server(**FakeJudgeServer options) starts one; every server a test started is stopped after it."""
    servers = []

    def start(**kw):
        kw.setdefault("latency", 0.005)
        servers.append(FakeJudgeServer(**kw).start())
        return servers[-1]

    yield start
    for s in servers:
        s.stop()
