"""Writing an output file whole or not at all.

A file written in one go at the end of a run (``--out FILE.npz``, ``--summary-json``, the PNGs
of ``--plot``) goes to a hidden temporary name in the same folder and is renamed over the
target only once it is complete: a full disk, a file-size limit or an interruption never leaves
a 0-byte or truncated file under the name the user asked for (the temporary file is removed).
The PTU stream is different (written while the run goes on): see
:class:`heraldry.host.ptu.PTUWriter`.
"""

import os

__all__ = ["write_atomically"]


def write_atomically(path, write, mode="wb"):
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it to ``path``.

    Raises the ``OSError`` of a failed write (``filename`` set to ``path``); the temporary file
    is removed then, and ``path`` is untouched (an earlier file of that name stays as it was)."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(folder, f".{name}.{os.getpid()}.part")
    try:
        with open(temporary, mode) as f:
            write(f)
        os.replace(temporary, path)
    except BaseException as error:
        try:
            os.remove(temporary)
        except OSError:
            pass
        if isinstance(error, OSError) and not error.filename:
            error.filename = path
        elif isinstance(error, OSError) and error.filename == temporary:
            error.filename = path
        raise
