"""CSV row files for ``scan --ray``, written by the same writer as ``diffsleuth scan --format csv``.

Ray's own ``write_csv`` (pyarrow) quotes every string and prints floats its own way; rows of the
two commands would then differ as text for the same files. This datasink writes each block with
:class:`~diffsleuth.cli.scan_output.RowStream`, so quoting (including CR/LF in file names) and
number formatting are those of ``scan``: one header line per file, then one line per row.
"""

from __future__ import annotations

import io
from typing import Any


def scan_csv_datasink(output: str) -> Any:
    """A Ray Data datasink writing CSV row files under ``output`` (a folder or URI), one per block.

    The class is made here so that importing this module does not import Ray (the CLI's help
    stays fast); Ray pickles it by value for the workers.
    """
    from ray.data.datasource import BlockBasedFileDatasink

    from diffsleuth.cli.scan_output import OutputFormat, RowStream

    class ScanCsvDatasink(BlockBasedFileDatasink):
        def __init__(self, path: str) -> None:
            super().__init__(path, file_format="csv")

        def write_block_to_file(self, block, file) -> None:
            table = block.to_arrow()
            text = io.StringIO(newline="")
            rows = RowStream(text, OutputFormat.csv, table.column_names)
            for row in table.to_pylist():
                rows.write(row)
            file.write(text.getvalue().encode("utf-8"))

    return ScanCsvDatasink(output)
