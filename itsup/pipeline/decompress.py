"""gzip decompression on a thread of its own: isal.igzip_threaded's reader.

ISA-L inflates at about 1 GB/s and releases the GIL, so a background thread
keeps the tar reader fed while it works. The library's reader does just
that: it reads the compressed stream in 8 MiB pieces and passes the output
on in 1 MiB blocks through a short queue, so a run of zeros (a sparse file)
never inflates into one huge buffer. Concatenated gzip members are read in
turn and zero padding after the last one is skipped, as `gzip -d` does; the
CRC-32 and length of each member are checked. It replaced a threaded reader
of our own of the same design, which was no faster and held more memory
(bench/RESULTS.md, "gzip implementations compared").
"""

from __future__ import annotations

from typing import BinaryIO

from isal import igzip_threaded


def gunzip_reader(upstream: BinaryIO) -> BinaryIO:
    """A readable stream of the decompressed content of a gzip `upstream`.

    A failure of `upstream` or of decoding (EOFError, gzip.BadGzipFile,
    isal_zlib.error) is raised by the read that reaches it. Closing the
    stream stops its thread.
    """
    return igzip_threaded.open(upstream, "rb")
