"""The benchmark's printed tables stay readable whatever the values."""

import re

import numpy as np

from adamfast.bench._report import print_small_sizes


class _Cfg:
    dtype = np.dtype(np.float32)
    threads = 2


def test_small_size_columns_never_run_together(capsys):
    small = {"sizes": [1024, 262144], "adam_step": [1.2, 123456.7],
             "torch fused": [12.5, 99999.9]}
    print_small_sizes(small, _Cfg())
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.strip().startswith("params"))
    rows = lines[header + 1:header + 3]
    cells = [re.findall(r"\S+ \(\S+\)", row) for row in rows]
    assert cells == [["1.2 (1.17)", "123456.7 (470.95)"], ["12.5 (12.21)", "99999.9 (381.47)"]]
    for row in rows:  # at least two spaces between cells
        assert re.search(r"\)\s{2,}\S", row)
