"""Progress bars: drawn on a terminal, silent where stderr is captured (a job's log)."""

import io

from usae.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_bar_when_stderr_is_not_a_terminal(capfd):
    assert list(progress_bar(range(5), desc="work", mininterval=0)) == [0, 1, 2, 3, 4]
    assert capfd.readouterr().err == ""


def test_a_bar_on_a_terminal():
    screen = Terminal()
    assert sum(progress_bar(range(5), desc="work", file=screen, mininterval=0)) == 10
    assert "work" in screen.getvalue() and "5/5" in screen.getvalue()
