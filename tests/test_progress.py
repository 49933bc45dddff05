"""Progress bars: shown on a terminal, quiet under --quiet, in CI logs and when stderr is redirected."""

import io

import pytest

from sources import progress as P


class _Tty(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def tty(monkeypatch):
    """A terminal on stderr, outside CI. Patched inside the test body: pytest swaps sys.stderr between phases."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("COOC_PROGRESS", raising=False)
    return lambda: monkeypatch.setattr(P.sys, "stderr", _Tty())


def test_bars_show_on_a_terminal_and_hide_under_quiet(tty):
    tty()
    assert P.bars_enabled(True)
    assert not P.bars_enabled(False)
    bar = P.progress_bar(range(3), progress=True, desc="x")
    assert not bar.disable
    assert P.progress_bar(range(3), progress=False).disable


def test_bars_hide_in_ci_and_when_redirected(tty, monkeypatch):
    tty()
    assert P.bars_enabled(True)
    monkeypatch.setenv("CI", "true")
    assert not P.bars_enabled(True)
    monkeypatch.delenv("CI")
    monkeypatch.setattr(P.sys, "stderr", io.StringIO())  # not a terminal
    assert not P.bars_enabled(True)
    monkeypatch.setenv("COOC_PROGRESS", "1")
    assert P.bars_enabled(True)
    assert not P.bars_enabled(False)  # --quiet always wins


def test_a_disabled_bar_still_iterates_everything(tty):
    tty()
    assert list(P.progress_bar(range(5), progress=False)) == list(range(5))


def test_transformers_bars_follow_the_same_rule(tty, monkeypatch):
    from transformers.utils import logging as hf_logging

    tty()
    P.third_party_bars(False)
    assert not hf_logging.is_progress_bar_enabled()
    P.third_party_bars(True)
    assert hf_logging.is_progress_bar_enabled()
    monkeypatch.setenv("CI", "1")
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    P.third_party_bars(True)
    assert not hf_logging.is_progress_bar_enabled()
    import sys

    from tqdm import tqdm

    with P.third_party_quiet():  # a library's plain tqdm bar prints nowhere
        for _ in tqdm(range(3), file=None, mininterval=0):
            pass
        assert sys.stderr is not P.sys.__stderr__ and sys.stderr.name == P.os.devnull
