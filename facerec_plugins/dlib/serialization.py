"""Reading dlib's serialization format (dlib/serialize.h), so dlib's model files load without dlib.

dlib writes integers as a control byte (low nibble: how many little-endian bytes follow; bit 0x80: the
value is negative) and the bytes of the magnitude; floats as two such integers, a 64-bit mantissa and a
16-bit exponent (value = mantissa * 2**exponent, with reserved exponents for infinities and NaN);
booleans as the characters '1' or '0'; strings and vectors as their length, then their items. dnn
tensors are the exception: their values are raw little-endian float32 (see `DlibReader.tensor_values`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from facerec.plugin import FacerecError

T = TypeVar("T")

# float_details's reserved exponents (dlib/float_details.h).
EXPONENT_INF, EXPONENT_NEG_INF, EXPONENT_NAN = 32000, 32001, 32002


class DlibFormatError(FacerecError):
    """A file that is not what a dlib reader expected; the message names the file and the offset."""


class DlibReader:
    """A cursor over the bytes of one dlib file."""

    def __init__(self, data: bytes, name: str = "<bytes>") -> None:
        self.data = memoryview(data)
        self.name = name
        self.offset = 0

    @classmethod
    def open(cls, path: str | Path) -> DlibReader:
        return cls(Path(path).read_bytes(), str(path))

    def error(self, what: str) -> DlibFormatError:
        return DlibFormatError(
            f"{self.name}: not a dlib file of the expected kind ({what} at byte {self.offset})"
        )

    def take(self, count: int) -> memoryview:
        """The next `count` raw bytes."""
        if count < 0 or self.offset + count > len(self.data):
            raise self.error(f"{count} bytes past the end")
        chunk = self.data[self.offset : self.offset + count]
        self.offset += count
        return chunk

    def int(self) -> int:
        """A serialized integer of any width."""
        control = self.take(1)[0]
        size = control & 0x0F
        if control & 0x70 or size > 8:
            raise self.error(f"bad integer control byte {control:#04x}")
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def float(self) -> float:
        """A serialized float or double (dlib's float_details: mantissa, exponent)."""
        if self.offset < len(self.data) and self.data[self.offset] & 0x70:
            raise self.error("an old ASCII float")
        mantissa, exponent = self.int(), self.int()
        if exponent == EXPONENT_INF:
            return math.inf
        if exponent == EXPONENT_NEG_INF:
            return -math.inf
        if exponent == EXPONENT_NAN:
            return math.nan
        return math.ldexp(mantissa, exponent)

    def bool(self) -> bool:
        flag = self.take(1)[0]
        if flag not in b"01":
            raise self.error(f"bad boolean byte {flag:#04x}")
        return flag == ord("1")

    def string(self) -> str:
        return bytes(self.take(self.int())).decode("utf-8", errors="replace")

    def vector(self, item: Callable[[], T]) -> list[T]:
        """A std::vector: its length, then each item read by `item`."""
        return [item() for _ in range(self.int())]

    def tensor_values(self, count: int) -> np.ndarray:
        """`count` raw little-endian float32 values, as dnn tensors (version 2) store them."""
        return np.frombuffer(self.take(4 * count), dtype="<f4").astype(np.float32)

    def at_end(self) -> bool:
        return self.offset == len(self.data)
