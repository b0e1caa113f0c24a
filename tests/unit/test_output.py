"""One plain-text console for the whole CLI: a path holding "[...]" prints as is."""

from __future__ import annotations

from itsup.cli.output import err, out


def test_brackets_in_a_path_are_never_markup() -> None:
    for console in (out, err):
        with console.capture() as captured:
            console.print("upstream/app/volumes/[bold]x[/bold]/file")
        assert captured.get().strip() == "upstream/app/volumes/[bold]x[/bold]/file"
