"""Rewrites a ppsched checkpoint's sections in place with their CRCs made
right (exec/runtime/checkpoint.c's container), so that a test reaches the
checks that come after the CRCs. Used by the shell tests:

    from ckpt_edit import rewrite
    rewrite(path, lambda name, data: data)   # name: bytes, data: bytearray
"""
import struct
import zlib


def rewrite(path, edit):
    b = open(path, "rb").read()
    nshape = struct.unpack_from("<I", b, 12)[0]
    pos = 16 + 4 * nshape + 4
    out, nsec = bytearray(b[:pos]), 0
    while True:
        (n,) = struct.unpack_from("<I", b, pos)
        if n == 0:
            break
        name = b[pos + 4:pos + 4 + n]
        (size,) = struct.unpack_from("<Q", b, pos + 4 + n)
        data = bytes(edit(name, bytearray(b[pos + 20 + n:pos + 20 + n + size])))
        pos += 20 + n + size
        h = struct.pack("<I", n) + name + struct.pack("<QI", len(data), zlib.crc32(data))
        out += h + struct.pack("<I", zlib.crc32(h)) + data
        nsec += 1
    end = struct.pack("<II", 0, nsec)
    open(path, "wb").write(out + end + struct.pack("<I", zlib.crc32(end)))
