"""Pickles made by hand, byte by byte: numpy's arrays as each protocol writes them, the released files' Python 2
format, and the catalogue of pickles the safe reader refuses (some crash or run code under the real `pickle`:
never give them to it). Only numpy and the standard library: a child process imports this without torch."""

from __future__ import annotations

import pickle
import struct

import numpy as np

from dpnp_ray import pickle_opcodes


def rows(n: int) -> np.ndarray:
    """(n, 3072) uint8, as in a CIFAR batch."""
    return (np.arange(n * 3072) % 251).astype(np.uint8).reshape(n, 3072)


# ---------------------------------------------------------------- a few opcodes by hand


def op_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def op_str(b: bytes) -> bytes:
    """Python 2's str (SHORT_BINSTRING or BINSTRING)."""
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b


def op_ints(*values: int) -> bytes:
    return b"".join(b"J" + struct.pack("<i", v) for v in values)


PLAIN_STATE = b"K\x03" + op_str(b"|") + b"NNN" + op_ints(-1, -1) + b"K\x00"


def op_dtype(code: bytes, state: bytes | None = PLAIN_STATE) -> bytes:
    """numpy.dtype(code, False, True) and, unless state is None, BUILD with the tuple `state` holds."""
    call = op_global("numpy", "dtype") + op_str(code) + b"\x89\x88\x87R"
    return call if state is None else call + b"(" + state + b"tb"


RECONSTRUCT = op_global("numpy.core.multiarray", "_reconstruct") + op_global("numpy", "ndarray") + b"K\x00\x85" \
    + op_str(b"b") + b"\x87R"


def op_array(shape: tuple[int, ...], dtype: bytes, data: bytes) -> bytes:
    """An ndarray as numpy writes it under protocol 2: `_reconstruct` + BUILD (1, shape, dtype, False, data)."""
    return RECONSTRUCT + b"(K\x01(" + op_ints(*shape) + b"t" + dtype + b"\x89" + data + b"tb"


def pkl(*ops: bytes) -> bytes:
    return b"\x80\x02" + b"".join(ops) + b"."


class _Calls:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


# ---------------------------------------------------------------- benign pickles

ARRAYS = {
    "u1": rows(3),
    "bool": np.array([[True, False, True]]),
    **{code: np.arange(-3, 9).astype(code).reshape(3, 4) for code in ("i1", "i2", "i4", "i8", "u2", "u4", "u8")},
    **{code: (np.linspace(-1, 1, 6) * (1 + 0.5j if code[0] == "c" else 1)).astype(code) for code in
       ("f2", "f4", "f8", "c8", "c16")},
    "big-endian": np.arange(5).astype(">i8"),
    "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    "transposed": np.arange(24).reshape(2, 3, 4).transpose(1, 0, 2),  # protocol 5: order 'K' with axes
    "strided": np.arange(10)[::3],
    "0-d": np.array(7, dtype=np.int16),
    "zero-size": np.zeros((0, 3), dtype=np.uint8),
    "long": np.arange(40_000, dtype=np.float32),  # over 64 KiB: read as a view into the file, then copied
}
BATCH = {
    b"batch_label": b"training batch 1 of 5",
    b"labels": [3, 0, 9, -1, 2**70, True, None],
    b"data": ARRAYS["u1"],
    b"filenames": [b"a.png", "b.png", b"", ""],
    b"nested": {"t": (1.5, float("inf"), ()), "l": [[], [b"x"]], 7: ARRAYS["i8"]},
    **{name.encode(): array for name, array in ARRAYS.items()},
}
BATCH[b"again"] = BATCH[b"data"]  # a memo reference


def numpy1(data: bytes) -> bytes:
    """`data` as numpy 1.x spells it: numpy.core.*, not numpy._core.* (one frame at most)."""
    if data[2:3] != b"\x95":  # protocols 0-3: GLOBAL lines
        return data.replace(b"cnumpy._core.", b"cnumpy.core.")
    assert struct.unpack("<Q", data[3:11])[0] == len(data) - 11, "more than one frame"
    body = data[11:]
    for module in (b"multiarray", b"numeric"):
        old, new = b"numpy._core." + module, b"numpy.core." + module
        body = body.replace(bytes([0x8C, len(old)]) + old, bytes([0x8C, len(new)]) + new)
    return data[:3] + struct.pack("<Q", len(body)) + body


SMALL = {b"data": rows(2), b"f": ARRAYS["fortran"], b"labels": [1, 2]}

# ---------------------------------------------------------------- everything else is refused

U1 = op_dtype(b"u1")
DATA6 = op_str(b"\x00" * 6)
OBJECT_FLAGS = b"K\x03" + op_str(b"<") + b"NNN" + op_ints(-1, -1) + b"K\x3f"  # u8 whose state says "object"
FIELDS = (b"K\x03" + op_str(b"|") + b"N" + op_str(b"a") + b"\x85}" + op_str(b"a") + op_dtype(b"O8") + b"K\x00\x86s"
          + op_ints(8, 1) + b"K\x10")
SELF = RECONSTRUCT + b"q\x07(K\x01" + op_ints(1) + b"\x85h\x07\x89" + op_str(b"\x00") + b"tb"  # its own dtype

#: id -> (bytes, a fragment of the message)
REFUSED = {
    # arrays that are not plain numeric
    "object array, protocol 2": (pickle.dumps(np.array([1, "a", None], dtype=object), 2), "object array"),
    "object array, protocol 5": (pickle.dumps(np.array([1, "a", None], dtype=object), 5), "object array"),
    "structured array": (pickle.dumps(np.zeros(2, dtype=[("a", "i4"), ("b", "f8")]), 5), "'V12'"),
    "str array": (pickle.dumps(np.array(["ab"]), 2), "'U2'"),
    "datetime array": (pickle.dumps(np.array([0], dtype="M8[s]"), 2), "'M8'"),
    "longdouble array": (pickle.dumps(np.zeros(2, dtype=np.longdouble), 2), "only plain numeric dtypes"),
    "dtype state with object flags": (pkl(op_array((2,), op_dtype(b"u8", OBJECT_FLAGS), op_str(b"A" * 16))),
                                      "not that of a plain numeric dtype"),
    "dtype state with fields": (pkl(op_array((2,), op_dtype(b"u8", FIELDS), op_str(b"A" * 16))), "fields"),
    "dtype 'O' by REDUCE": (pkl(op_array((2,), op_dtype(b"O"), op_str(b"A" * 16))), "object array"),
    "dtype 'O8' with a plain state": (pkl(op_array((2,), op_dtype(b"O8"), op_str(b"A" * 16))), "object array"),
    "dtype without its state": (pkl(op_array((6,), op_dtype(b"u1", None), DATA6)), "without the BUILD"),
    "dtype state of version 2": (pkl(op_array((6,), op_dtype(b"u1", b"K\x02" + PLAIN_STATE[2:]), DATA6)),
                                 "version 3"),
    "dtype state too short": (pkl(op_array((6,), op_dtype(b"u1", b"K\x03"), DATA6)), "8-tuple"),
    "dtype with align=True": (pkl(op_global("numpy", "dtype") + op_str(b"u1") + b"\x88\x88\x87R."), "own call"),
    "object data as a list": (pkl(op_array((1,), U1, b"]K\x01a")), "list of Python objects"),
    "bool array with a 2": (pkl(op_array((2,), op_dtype(b"b1"), op_str(b"\x01\x02"))), "bool array"),
    "its own dtype": (pkl(SELF), "refers to itself"),
    # sizes
    "fewer bytes than the shape needs": (pkl(op_array((10000, 3072), U1, DATA6)), "needs 30720000 bytes"),
    "more bytes than the shape needs": (pkl(op_array((2,), U1, DATA6)), "needs 2 bytes"),
    "negative dimension": (pkl(op_array((-6,), U1, DATA6)), "negative"),
    "negative dimensions that multiply out": (pkl(op_array((-2, -3), U1, DATA6)), "negative"),
    "absurd dimension of a zero-size array": (pkl(RECONSTRUCT + b"(K\x01(" + op_ints(0) + b"\x8a\x06" + (1 << 40)
                                                  .to_bytes(6, "little") + b"t" + U1 + b"\x89" + op_str(b"") + b"tb"),
                                              "absurd"),
    "33 dimensions": (pkl(op_array((1,) * 33, U1, op_str(b"\x00"))), "too many dimensions"),
    "a huge int as a dimension": (pkl(RECONSTRUCT + b"(K\x01\x8b\x00\x04\x00\x00" + b"\x7f" * 1024 + b"\x85"
                                      + U1 + b"\x89" + DATA6 + b"tb"), "<int of"),
    # numpy's globals driven into other calls
    "_reconstruct of numpy.dtype": (pkl(op_global("numpy.core.multiarray", "_reconstruct") + op_global("numpy", "dtype")
                                        + b"K\x00\x85" + op_str(b"b") + b"\x87R"), "not numpy's own call"),
    "_reconstruct without BUILD": (pkl(RECONSTRUCT), "without the BUILD"),
    "a second BUILD": (pkl(op_array((6,), U1, DATA6) + b"Nb"), "second BUILD"),
    "BUILD on a list": (pkl(b"]Nb"), "BUILD on list"),
    "numpy.ndarray called": (pkl(op_global("numpy", "ndarray") + b"K\x02\x85\x85R"), "numpy.ndarray(...)"),
    "NEWOBJ of numpy.ndarray": (pkl(op_global("numpy", "ndarray") + b"K\x02\x85\x85\x81"), "NEWOBJ of numpy.ndarray"),
    "a bare global as a value": (pkl(b"]" + op_global("numpy", "dtype") + b"a"), "stands as a value"),
    "_codecs.encode to utf-16": (pkl(op_global("_codecs", "encode") + b"X\x01\x00\x00\x00xX\x06\x00\x00\x00utf-16"
                                     + b"\x86R"), "_codecs.encode(...)"),
    "_frombuffer with a BUILD": (pickle.dumps(np.arange(3), 5)[:-1] + b"Nb.", "numeric._frombuffer"),  # numpy 1 or 2
    "_frombuffer of an object dtype": (b"\x80\x05" + op_global("numpy._core.numeric", "_frombuffer")
                                       + b"(" + op_str(b"A" * 8) + op_dtype(b"O8") + op_ints(1) + b"\x85X\x01\x00\x00"
                                       + b"\x00Ct" + b"R.", "object array"),
    "_frombuffer in order K without axes": (b"\x80\x05" + op_global("numpy._core.numeric", "_frombuffer") + b"("
                                            + DATA6 + U1 + op_ints(6) + b"\x85X\x01\x00\x00\x00Kt" + b"R.", "axes"),
    # other globals, never imported
    "os.system": (b"cos\nsystem\n(S'echo pwned'\ntR.", "os.system"),
    "builtins.eval by STACK_GLOBAL": (pickle.dumps(_Calls(eval, "1 + 1"), 4), "builtins.eval"),
    "numpy.load": (pickle.dumps(_Calls(np.load, "x.npy"), 2), "numpy.load"),
    "a numpy scalar": (pickle.dumps(np.float64(1.5), 2), "multiarray.scalar"),
    "a set": (pickle.dumps({1, 2}, 2), "__builtin__.set"),
    "a module nobody has": (pkl(op_global("no_such_module", "x")), "no_such_module.x"),
    # truncated and malformed streams
    "empty": (b"", "truncated"),
    "truncated dict": (b"\x80\x02}q\x00", "truncated"),
    "truncated batch": (pickle.dumps(BATCH, 2)[:2000], "truncated"),
    "BINBYTES8 of 2**62 bytes": (b"\x80\x04\x8e" + struct.pack("<Q", 1 << 62) + b".", "truncated"),
    "BYTEARRAY8 of 2**62 bytes": (b"\x80\x05\x96" + struct.pack("<Q", 1 << 62) + b".", "truncated"),
    "FRAME of 2**60 bytes": (b"\x80\x04\x95" + struct.pack("<Q", 1 << 60) + b"N.", "frame"),
    "BINSTRING of negative length": (b"\x80\x02T\xff\xff\xff\xff.", "truncated"),
    "LONG4 of negative length": (b"\x80\x02\x8b\xff\xff\xff\xff.", "truncated"),
    "text without newline": (b"I12", "newline"),
    "STRING without quotes": (b"Sabc\n.", "quotes"),
    "INT of 5000 digits": (b"I" + b"9" * 5000 + b"\n.", "not a number"),
    "protocol 6": (b"\x80\x06N.", "protocol above 5"),
    "stack underflow": (b"\x80\x02R.", "stack underflow"),
    "no MARK": (b"\x80\x02t.", "no MARK"),
    "GET never PUT": (b"\x80\x02h\x05.", "never PUT"),
    "key without value": (b"\x80\x02}(K\x01u.", "without its value"),
    "unhashable key": (b"\x80\x02}]Ns.", "unhashable"),
    "APPEND to a dict": (b"\x80\x02}Na.", "APPEND on dict"),
    "nested 200 deep": (b"\x80\x02" + b"]" * 200 + b"a" * 199 + b".", "nested more than 100"),
    "calls nested 200 deep": (b"\x80\x02" + op_global("numpy", "dtype") + b")R" * 200 + b".", "not how numpy"),
    "bad utf-8": (b"\x80\x02X\x01\x00\x00\x00\xff.", "utf-8"),
    # opcodes these files never use
    **{name: (b"\x80\x04" + code + b"\x00" * 16, name) for code, name in pickle_opcodes._REFUSED_OPS.items()},
    "unknown opcode": (b"\x80\x02\xff.", "0xff"),
}


def py2_pickle(batch: dict[bytes, object]) -> bytes:
    """Opcodes as Python 2's cPickle wrote the released files: numpy.core names, byte strings, protocol 2."""

    def s(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b

    out = b"\x80\x02}("
    for key, value in batch.items():
        out += s(key)
        if isinstance(value, np.ndarray):
            out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s(b"b") + b"\x87R("
            out += b"K\x01(" + b"".join(b"J" + struct.pack("<i", d) for d in value.shape) + b"t"
            out += b"cnumpy\ndtype\n" + s(b"u1") + b"K\x00K\x01\x87R(K\x03" + s(b"|")
            out += b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
            out += b"\x89T" + struct.pack("<I", value.nbytes) + value.tobytes() + b"tb"
        else:  # a list of small ints
            out += b"](" + b"".join(b"K" + bytes([v]) for v in value) + b"e"
    return out + b"u."
