"""The terminal reporter: rich is imported only when it is made (a piped run never pays for it),
and what is in progress is what it renders."""

from __future__ import annotations

import io
import subprocess
import sys

from moat.run.report import RichReporter


def test_a_plain_run_never_imports_rich() -> None:
    code = ("import sys; from moat.run.report import reporter_for; import io; "
            "reporter_for(io.StringIO()); print('rich' in ' '.join(sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_live_view_shows_the_tasks_in_progress_and_their_bars() -> None:
    reporter = RichReporter()
    try:
        _render_checks(reporter)
    finally:
        reporter.pause()  # the live view's refresh thread ends, whatever failed


def _render_checks(reporter: RichReporter) -> None:
    from rich.console import Console

    reporter.task("image", "building the agent image")
    reporter.update("image", "Step 3/7")
    reporter.task("pull", "pulling postgres")
    reporter.progress("pull", 50, 100)
    rendered = io.StringIO()
    Console(file=rendered, width=120).print(reporter._render())
    text = rendered.getvalue()
    assert "building the agent image" in text and "Step 3/7" in text and "pulling postgres" in text
    reporter.finish("image", "built", ok=True)
    rendered = io.StringIO()
    Console(file=rendered, width=120).print(reporter._render())
    assert "building the agent image" not in rendered.getvalue()
