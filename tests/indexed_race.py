"""The indexed ops under an index stored out of range after its check (shared by the stand-in's
and the cuda backend's tests): each must skip it, say so, and touch nothing outside."""
import numpy as np
import pytest

from ccadgpu import ops
from ccadgpu.errors import InvalidArgumentError


def assert_race_contained(op, table, victim, idx, vals, y, indptr):
    """Run ``op`` (gather, scatter or spmv) reading or writing ``table`` through ``idx``, whose
    first entry is stored (by the caller's patch) so as to hit ``victim``'s first element."""
    np.asarray(victim)[0] = 7.0
    with pytest.raises(InvalidArgumentError, match="changed while the launch ran"):
        if op == "gather":
            ops.gather(vals, table, idx)
        elif op == "scatter":
            ops.scatter(table, idx, vals)
        else:
            ops.spmv_csr(y, indptr, idx, vals, table)
    assert np.asarray(victim)[0] == 7.0
    if op == "scatter":                            # the others were written
        assert np.asarray(table)[0] == 99.0
