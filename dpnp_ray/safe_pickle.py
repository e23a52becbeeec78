"""Reads pickled dicts and lists of plain numeric numpy arrays without pickle's call machinery.

`loads` runs the opcode stream (protocols 0-5, written by Python 2 or 3 with numpy 1.x or 2.x) on a
stack machine of its own (`pickle_opcodes`): a global is an inert name, never imported, and REDUCE,
NEWOBJ and BUILD only make inert call nodes. Afterwards just these calls become data, built here:
- numpy's `_reconstruct(ndarray, (0,), b'b')` + BUILD state, and protocol 5's `_frombuffer`, of a
  `numpy.dtype` + BUILD state of a plain numeric kind (bool, int, uint, float, complex): an array
  copied out of the file's bytes with `np.frombuffer`;
- `_codecs.encode(str, 'latin1')` and `bytes()`: how Python 3 writes bytes under protocols 0-2.
Anything else raises `RefusedPickle`, and no length a file states is used before it is checked against
the bytes that follow, so nothing larger than the file is allocated. Arrays come back in native
byte order; Python 2 strings come back as bytes, as from `pickle.loads(data, encoding="bytes")`.
"""

from __future__ import annotations

import math

import numpy as np

from .pickle_opcodes import (_BYTES, _DTYPE, _ENCODE, _FROMBUFFER, _NDARRAY, _RECONSTRUCT, _UNSET, RefusedPickle,
                             _ByteArray, _Call, _Global, _Machine, _show)

#: dtype.__reduce__'s type strings of the fixed-size numeric kinds (no object, void, str, datetime, longdouble)
_NUMERIC = frozenset("b1 i1 i2 i4 i8 u1 u2 u4 u8 f2 f4 f8 c8 c16".split())
_MAX_DEPTH = 100  # nesting of containers and calls
_MAX_DIMS, _MAX_DIM = 32, 1 << 32  # a zero-size array's dimensions are not bounded by its bytes


def loads(data: bytes) -> object:
    """The dicts, lists, tuples, scalars, strings and plain numeric arrays that the pickle `data` holds."""
    return _Resolver().value(_Machine(data).run(), 0)


# ---------------------------------------------------------------- from nodes to data


class _Resolver:
    """Turns the machine's result into plain values; calls become data only in numpy's own shapes."""

    def __init__(self):
        self.done: dict[int, object] = {}  # id of a node or container -> its value (shared references stay shared)
        self.busy: set[int] = set()  # calls being resolved, to refuse one whose state holds itself

    def value(self, x: object, depth: int) -> object:
        if x is None or type(x) in (bool, int, float, str, bytes):
            return x
        key = id(x)
        if key in self.done:
            return self.done[key]
        if depth > _MAX_DEPTH:
            raise RefusedPickle(f"containers nested more than {_MAX_DEPTH} deep")
        if isinstance(x, list):
            out = self.done[key] = []
            out.extend(self.value(v, depth + 1) for v in x)
        elif isinstance(x, dict):
            out = self.done[key] = {}
            for k, v in x.items():
                k, v = self.value(k, depth + 1), self.value(v, depth + 1)
                try:
                    out[k] = v
                except TypeError:
                    raise RefusedPickle(f"an unhashable dict key {_show(k)}") from None
        elif isinstance(x, tuple):
            out = tuple(self.value(v, depth + 1) for v in x)
        elif isinstance(x, memoryview):
            out = bytes(x)
        elif isinstance(x, _ByteArray):
            out = bytearray(x.view)
        elif isinstance(x, _Call):
            if key in self.busy:
                raise _refuse(x, f"{x!r} refers to itself")
            self.busy.add(key)
            out = self.call(x, depth + 1)
            self.busy.discard(key)
        else:
            raise RefusedPickle(f"{x!r} stands as a value; a pickle of arrays only calls it")
        self.done[key] = out
        return out

    def call(self, node: _Call, depth: int) -> object:
        func = node.func
        name = (func.module, func.name) if isinstance(func, _Global) and not node.newobj else None
        if name in _RECONSTRUCT:
            return self.reconstruct(node, depth)
        if name in _FROMBUFFER:
            return self.frombuffer(node, depth)
        if name == _DTYPE:
            return self.dtype(node, depth)
        if name == _ENCODE or name in _BYTES:
            args = self.value(node.args, depth)
            if node.state is _UNSET and name in _BYTES and args == ():
                return b""
            if (node.state is _UNSET and len(args) == 2 and type(args[0]) is str and type(args[1]) is str
                    and args[1] in ("latin1", "latin-1")):
                try:
                    return args[0].encode("latin1")
                except UnicodeEncodeError:
                    pass
        raise _refuse(node, f"{node!r} on {_show(node.args)}, which is not how numpy or Python writes an array "
                            "or bytes")

    def reconstruct(self, node: _Call, depth: int) -> np.ndarray:
        args, state = node.args, node.state
        if not (len(args) == 3 and _is_global(args[0], _NDARRAY) and _ints(self.value(args[1], depth)) == (0,)
                and _equal(self.value(args[2], depth), b"b")):
            raise _refuse(node, f"{node!r} on {_show(args)}, not numpy's own call for an ndarray")
        if state is _UNSET:
            raise _refuse(node, "an ndarray without the BUILD that gives its data")
        if not (isinstance(state, tuple) and len(state) == 5):
            raise _refuse(node, f"an ndarray with BUILD state {_show(state)}, not (1, shape, dtype, fortran, data)")
        version, shape, dtype, fortran, raw = state
        if type(version) is not int or version != 1 or type(fortran) not in (bool, int) or fortran not in (0, 1):
            raise _refuse(node, f"an ndarray with BUILD state {_show(state)}, not (1, shape, dtype, fortran, data)")
        shape, dtype = _ints(self.value(shape, depth)), self.value(dtype, depth)
        if shape is None or not isinstance(dtype, np.dtype):
            raise _refuse(node, f"an ndarray of shape {_show(shape)} and dtype {_show(dtype)}")
        return _array(node, shape, dtype, self.raw(node, raw, depth), "F" if fortran else "C")

    def frombuffer(self, node: _Call, depth: int) -> np.ndarray:
        args = node.args
        if node.state is not _UNSET or len(args) not in (4, 5):
            raise _refuse(node, f"{node!r} on {_show(args)}, not numpy's own call for an ndarray")
        dtype, shape, order = (self.value(a, depth) for a in args[1:4])
        axes = self.value(args[4], depth) if len(args) == 5 else None
        shape = _ints(shape)
        if not isinstance(dtype, np.dtype) or shape is None or not _equal(order, "C", "F", "K"):
            raise _refuse(node, f"an ndarray of dtype {_show(dtype)}, shape {_show(shape)}, order {_show(order)}")
        if (order == "K") != (axes is not None) or (axes is not None and
                                                     sorted(_ints(axes) or ()) != list(range(len(shape)))):
            raise _refuse(node, f"an ndarray in order {_show(order)} with axes {_show(axes)}")
        array = _array(node, shape, dtype, self.raw(node, args[0], depth), "C" if order == "K" else order)
        return array if axes is None else array.transpose(axes)

    def raw(self, node: _Call, x: object, depth: int) -> bytes | memoryview:
        """An array's bytes, still a view into the file where they are long."""
        if isinstance(x, (bytes, memoryview)):
            return x
        if isinstance(x, _ByteArray):
            return x.view
        if isinstance(x, list):
            raise _refuse(node, "an array whose data is a list of Python objects (an object array)")
        value = self.value(x, depth)  # Python 3 under protocols 0-2: _codecs.encode(str, 'latin1')
        if not isinstance(value, bytes):
            raise _refuse(node, f"an array whose data is {_show(value)}, not bytes")
        return value

    def dtype(self, node: _Call, depth: int) -> np.dtype:
        args = self.value(node.args, depth)
        if not (len(args) == 3 and _flag(args[1]) is False and _flag(args[2]) is True):
            raise _refuse(node, f"numpy.dtype{_show(args)}, not numpy's own call for a dtype")
        code = args[0].decode("latin1") if isinstance(args[0], bytes) else args[0]
        if type(code) is not str or code not in _NUMERIC:
            what = " (an object array: its items would be Python objects)" if str(code).startswith("O") else ""
            raise _refuse(node, f"an array of dtype {_show(code)}{what}; only plain numeric dtypes "
                                "(bool, int, uint, float, complex) are read")
        state = node.state
        if state is _UNSET:
            raise _refuse(node, f"numpy.dtype({code!r}) without the BUILD that gives its byte order")
        if not (isinstance(state, tuple) and len(state) == 8):
            raise _refuse(node, f"numpy.dtype({code!r}) with BUILD state {_show(state)}, not numpy's 8-tuple")
        if state[2:5] != (None, None, None):  # checked before anything inside them is resolved
            raise _refuse(node, f"numpy.dtype({code!r}) with fields or a sub-array in its state {_show(state)}")
        version, order, _, _, _, size, align, flags = (self.value(v, depth) for v in state)
        order = order.decode("latin1") if isinstance(order, bytes) else order
        if not (type(version) is int and version == 3 and _equal(order, *(("|",) if code[1:] == "1" else ("<", ">")))
                and all(type(v) is int for v in (size, align, flags)) and (size, align, flags) == (-1, -1, 0)):
            raise _refuse(node, f"numpy.dtype({code!r}) with state {_show(state)}, not that of a plain numeric "
                                "dtype (version 3, byte order, no fields, size and alignment -1, flags 0)")
        return np.dtype(order + code)


def _refuse(node: _Call, what: str) -> RefusedPickle:
    return RefusedPickle(f"{what} (byte {node.at})")


def _is_global(x: object, name: tuple[str, str]) -> bool:
    return isinstance(x, _Global) and (x.module, x.name) == name


def _equal(x: object, *options: object) -> bool:
    """`x` is one of the str or bytes `options` (a plain `==` would compare an array item by item)."""
    return any(type(x) is type(o) and x == o for o in options)


def _ints(x: object) -> tuple[int, ...] | None:
    """`x` if it is a tuple of plain ints (no bools), else None."""
    return x if isinstance(x, tuple) and all(type(v) is int for v in x) else None


def _flag(x: object) -> bool | None:
    """A bool written as True/False or 1/0; None for anything else."""
    return bool(x) if type(x) in (bool, int) and x in (0, 1) else None


def _array(node: _Call, shape: tuple[int, ...], dtype: np.dtype, raw: bytes | memoryview, order: str) -> np.ndarray:
    """A writable copy of `raw` in native byte order, once its size matches `shape` exactly."""
    if len(shape) > _MAX_DIMS or any(not 0 <= d <= _MAX_DIM for d in shape):
        raise _refuse(node, f"an array of shape {_show(shape)}: negative, absurd or too many dimensions")
    count = math.prod(shape)
    if count * dtype.itemsize != len(raw):
        raise _refuse(node, f"an array of shape {_show(shape)} and dtype {dtype} needs {count * dtype.itemsize} "
                            f"bytes; the pickle holds {len(raw)}")
    flat = np.frombuffer(raw, dtype=dtype, count=count)
    if dtype.kind == "b" and count and flat.view(np.uint8).max() > 1:
        raise _refuse(node, "a bool array with bytes other than 0 and 1")
    return flat.reshape(shape, order=order).astype(dtype.newbyteorder("="), order="K")  # a copy
