"""Tests for dpnp_ray.safe_pickle: numpy's pickles read back exactly, everything else refused.

The refused cases include files that crash or run code under the real `pickle` (a dtype whose state
says "object", os.system); they are never given to `pickle`, and one test runs them all in a child
process so that a crash would fail it rather than the suite.
"""

from __future__ import annotations

import pickle
import pickletools
import subprocess
import sys
import warnings

import numpy as np
import pytest

from dpnp_ray import pickle_opcodes
from dpnp_ray.safe_pickle import RefusedPickle, loads

from .support import REPO
from .support.pickles import BATCH, REFUSED, SMALL, numpy1, op_array, op_dtype, op_str, pkl, py2_pickle, rows


# ---------------------------------------------------------------- a few opcodes by hand


def test_the_hand_written_opcodes_are_sound():
    data = pkl(op_array((2, 3), op_dtype(b"u1"), op_str(bytes(range(6)))))
    expected = pickle.loads(data, encoding="bytes")
    assert same(loads(data), expected) and expected.tolist() == [[0, 1, 2], [3, 4, 5]]


# ---------------------------------------------------------------- benign pickles read back exactly


def same(a: object, b: object) -> bool:
    """Equal values of the same types; arrays of equal dtype (up to byte order), shape and items."""
    if isinstance(a, np.ndarray):
        return (isinstance(b, np.ndarray) and a.dtype.newbyteorder("=") == b.dtype.newbyteorder("=")
                and a.shape == b.shape and np.array_equal(a, b) and b.flags.writeable)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(same, a, b))
    return a == b


@pytest.mark.parametrize("protocol", range(6))
def test_numpy_pickles_read_back_as_pickle_reads_them(protocol):
    data = pickle.dumps(BATCH, protocol=protocol)
    expected, got = pickle.loads(data, encoding="bytes"), loads(data)
    assert same(expected, got)
    assert got[b"again"] is got[b"data"]  # shared as in the pickle
    assert got[b"big-endian"].dtype == np.dtype("i8") and got[b"fortran"].flags.f_contiguous


def test_bytearray_and_empty_bytes():
    data = {b"e": b"", b"ba": bytearray(b"xy"), b"z": np.zeros(0)}
    assert same(loads(pickle.dumps(data, protocol=5)), data)
    assert same(loads(pickle.dumps({b"e": b"", b"z": np.zeros(0)}, protocol=2)), {b"e": b"", b"z": np.zeros(0)})


def test_the_released_python2_format():
    batch = {b"data": rows(30), b"labels": list(range(10)) * 3}  # 30 x 3072 bytes: one BINSTRING
    data = py2_pickle(batch)
    assert same(loads(data), pickle.loads(data, encoding="bytes"))


PY2_PROTOCOL_0 = b"""(dp0
S'data'
p1
cnumpy.core.multiarray
_reconstruct
p2
(cnumpy
ndarray
p3
(I0
tp4
S'b'
p5
tp6
Rp7
(I1
(L2L
I3
tp8
cnumpy
dtype
p9
(S'u1'
p10
I0
I1
tp11
Rp12
(I3
S'|'
p13
NNNI-1
I-1
I0
tp14
bI00
S'\\x00\\x01\\x02\\n\\xfe\\xff'
p15
tp16
bsS'labels'
p17
(lp18
I1
aI2
asS'names'
p19
(lp20
S"it's"
p21
ag21
aVcaf\\u00e9
p22
asS'ratio'
p23
F0.25
sS'flag'
p24
I01
s.
"""


def test_python2_protocol_0():
    got = loads(PY2_PROTOCOL_0)
    assert same(got, pickle.loads(PY2_PROTOCOL_0, encoding="bytes"))
    assert got[b"data"].tolist() == [[0, 1, 2], [10, 254, 255]] and got[b"names"] == [b"it's", b"it's", "café"]
    assert got[b"flag"] is True


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_numpy1_spelling(protocol):
    data = numpy1(pickle.dumps(SMALL, protocol=protocol))
    assert b"numpy.core." in data and b"numpy._core." not in data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy 2's numpy.core shims warn
        expected = pickle.loads(data, encoding="bytes")
    assert same(expected, loads(data)) and same(SMALL, loads(data))


def test_every_pickle_opcode_is_handled_or_refused_by_name():
    known = {**{c: name for c, (name, _) in pickle_opcodes._OPS.items()}, **pickle_opcodes._REFUSED_OPS}
    assert not set(pickle_opcodes._OPS) & set(pickle_opcodes._REFUSED_OPS)
    assert known == {op.code.encode("latin1"): op.name for op in pickletools.opcodes}


# ---------------------------------------------------------------- everything else is refused


@pytest.mark.parametrize("case", REFUSED)
def test_refused_with_what_was_found(case):
    data, fragment = REFUSED[case]
    with pytest.raises(RefusedPickle) as err:
        loads(data)
    assert fragment in str(err.value)


def test_the_refused_cases_cannot_crash_a_process_nor_import_anything():
    """In a child: were any case handed to numpy's reconstructors, it could segfault."""
    code = (
        "import sys, warnings\n"
        "from dpnp_ray.safe_pickle import loads, RefusedPickle\n"
        "from tests.support.pickles import REFUSED, SMALL, numpy1\n"
        "import pickle\n"
        "before = set(sys.modules)\n"
        "for name, (data, _) in REFUSED.items():\n"
        "    try:\n"
        "        loads(data)\n"
        "    except RefusedPickle:\n"
        "        continue\n"
        "    sys.exit(f'not refused: {name}')\n"
        "for protocol in (0, 2, 4, 5):\n"
        "    loads(numpy1(pickle.dumps(SMALL, protocol=protocol)))\n"
        "new = sorted(m for m in set(sys.modules) - before if not m.startswith('encodings.'))  # codecs load lazily\n"
        "sys.exit(f'imported {new}' if new else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
