"""The agent's output relay: lines for the record, linear whatever the output's shape."""

from __future__ import annotations

import time
from typing import Any

import pytest

from moat.run.output import MAX_LINE, LineSplitter, relay
from moat.runtime.base import OutputChunk


class Sink:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def log(self, stream: str, line: str, ts: str | None = None, **extra: Any) -> None:
        self.lines.append((stream, line, extra))


def split(*chunks: bytes, max_line: int = MAX_LINE) -> list[tuple[str, bool]]:
    splitter = LineSplitter(max_line)
    out = []
    for chunk in chunks:
        out += splitter.feed(chunk)
    return out + splitter.flush()


def test_newlines_carriage_returns_and_crlf_end_lines() -> None:
    assert split(b"a\nb\r\nc\rd") == [("a", False), ("b", False), ("c", False), ("d", False)]
    # A \r\n split across two chunks is one line end, not two.
    assert split(b"a\r", b"\nb\n") == [("a", False), ("b", False)]
    assert split(b"\n\n") == [("", False), ("", False)]


def test_long_lines_are_recorded_in_marked_pieces_without_splitting_characters() -> None:
    text = ("é" * 10).encode()  # 20 bytes
    pieces = split(text + b"\n", max_line=7)
    assert "".join(p for p, _ in pieces) == "é" * 10
    assert all(cut for _, cut in pieces[:-1]) and not pieces[-1][1]
    assert all("\ufffd" not in p for p, _ in pieces)


def test_progress_bar_redraws_are_linear() -> None:
    # 40,000 redraws used to be one huge line, re-split on every chunk (49 s of CPU).
    splitter = LineSplitter()
    started = time.process_time()
    count = sum(len(splitter.feed(b"\r%d%%" % i)) for i in range(40_000))
    assert count == 40_000  # the text before the first \r, then each redraw but the last
    assert time.process_time() - started < 2.0


@pytest.mark.parametrize("chunk", [32 * 1024, 1024 * 1024])
def test_fifty_megabytes_without_a_newline_are_linear(chunk: int) -> None:
    # 50 MB without a newline took 45 s and a huge line; now it is cut into MAX_LINE pieces.
    splitter = LineSplitter()
    data = b"x" * chunk
    started = time.process_time()
    pieces = []
    for _ in range(50 * 1024 * 1024 // chunk):
        pieces += splitter.feed(data)
    pieces += splitter.flush()
    assert time.process_time() - started < 5.0
    assert len(pieces) == 50 * 1024 * 1024 // MAX_LINE and all(len(p) == MAX_LINE for p, _ in pieces)


def test_relay_records_each_line_and_marks_the_first(tmp_path: Any) -> None:
    sink = Sink()
    firsts: list[float] = []
    chunks = [OutputChunk("stdout", b"one\ntw"), OutputChunk("stderr", b"err\n"), OutputChunk("stdout", b"o\nend")]
    relay(chunks, sink, firsts.append, echo=False)
    assert [(s, line) for s, line, _ in sink.lines] == [
        ("stdout", "one"), ("stderr", "err"), ("stdout", "two"), ("stdout", "end")]
    assert len(firsts) == 1


def test_a_secret_is_never_cut_in_two_where_a_long_line_is_cut() -> None:
    # Each piece is masked on its own: a password across the cut would be recorded in two halves.
    from moat.masking import Masker

    secret = "HK35vgTPX6WGAyuuOnxI8tXwhPFGyPJi"
    masker = Masker({secret})
    for offset in range(-len(secret) - 1, 2):
        splitter = LineSplitter(max_line=1000, secrets=masker)
        line = b"x" * (1000 + offset) + secret.encode() + b"y" * 50 + b"\n"
        pieces = [text for text, _ in splitter.feed(line)]
        assert "".join(pieces) == line.decode().rstrip("\n")
        masked = [masker.text(piece) for piece in pieces]
        assert not any(secret[:8] in m or secret[-8:] in m for m in masked), (offset, masked)


def test_relay_records_a_secret_at_the_cut_masked(tmp_path: Any) -> None:
    from moat.masking import Masker
    from moat.run.store import RunStore

    secret = "HK35vgTPX6WGAyuuOnxI8tXwhPFGyPJi"
    masker = Masker({secret})
    record = RunStore(tmp_path).create("run_1", masker)
    output = b"x" * (MAX_LINE - 10) + secret.encode() + b"\n"
    relay([OutputChunk("stdout", output)], record, lambda _at: None, echo=False, secrets=masker)
    record.close()
    text = (tmp_path / "runs" / "run_1" / "logs.jsonl").read_text()
    assert secret[:6] not in text and secret[-6:] not in text and "****" in text
