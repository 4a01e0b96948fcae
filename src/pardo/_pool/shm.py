"""Pickling for the pool's wire, with large buffers moved through shared memory.

Objects are pickled with protocol 5. Buffers that pickle hands out of band (numpy arrays,
``bytearray`` wrapped in ``pickle.PickleBuffer``...) and that are at least ``OOB_MIN`` bytes
long are written to a file in ``/dev/shm`` instead of the pipe; the pickle then carries only
the file's name. The receiver maps the file and rebuilds the object *on the mapping*, so a
large array crosses the process boundary with one copy (into the file) instead of three
(pickle, pipe write, pipe read).

Who removes a file: the pool's parent process, always. It removes the files of a task's
arguments when the task is settled (a re-dispatched task reuses them), the files of a result
right after mapping them, and everything with its pool's name prefix at shutdown or when a
worker dies, so a crash leaves nothing behind in ``/dev/shm``.

Plain ``pickle`` is tried first because it is several times faster than cloudpickle for
ordinary data. Objects that pickle cannot handle, and objects whose classes live in
``__main__`` (which a worker process cannot import by name), go through cloudpickle, which
pickles them by value.
"""

from __future__ import annotations

import ctypes
import glob
import itertools
import mmap
import os
import pickle
import weakref

import cloudpickle

SHM_DIR = "/dev/shm"
# Below this size a buffer is cheaper to copy through the pipe than to give its own file.
OOB_MIN = 256 * 1024

_MAIN_MARK = b"__main__"


def _shm_usable() -> bool:
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK | os.X_OK)


class BufferArena:
    """Writes and reads the out-of-band buffer files of one pool, named ``prefix-N``.

    Args:
        prefix: file-name prefix, unique to the pool and the writing process.
    """

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.enabled = _shm_usable()
        self._counter = itertools.count()

    def store(self, view: memoryview) -> str:
        """Write ``view`` (contiguous bytes) to a new file; return its name."""
        name = f"{self.prefix}-{next(self._counter)}"
        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC
        fd = os.open(os.path.join(SHM_DIR, name), flags, 0o600)
        try:
            view = view.cast("B")
            done = 0
            while done < len(view):
                done += os.write(fd, view[done:])
        except BaseException:
            os.close(fd)
            unlink(name)
            raise
        os.close(fd)
        return name


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


def load_buffer(name: str):
    """Map the buffer file ``name`` (read-write, shared); the file itself is left in place.

    Returns a writable byte buffer that unmaps itself when the last object built on it
    (say, a numpy array) is freed. Python's ``mmap.mmap`` would keep a duplicate of the
    file descriptor open for as long as the mapping lives — one fd per received array,
    until the process runs out of them — so the mapping is made with libc directly.
    """
    fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        addr = _libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
        if addr is None or addr == _MAP_FAILED:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot map {name}: {os.strerror(err)}")
    finally:
        os.close(fd)
    buf = (ctypes.c_ubyte * size).from_address(addr)
    weakref.finalize(buf, _libc.munmap, addr, size)
    return memoryview(buf)


def unlink(name: str) -> None:
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except FileNotFoundError:
        pass


def sweep(prefix: str) -> None:
    """Remove every buffer file whose name starts with ``prefix``."""
    for path in glob.glob(os.path.join(SHM_DIR, glob.escape(prefix) + "*")):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def dumps(obj, arena: BufferArena | None = None):
    """Pickle ``obj`` for the wire.

    Returns:
        ``bytes`` when everything travelled in band, else ``(bytes, [file names])``.

    Raises:
        Whatever cloudpickle raises for an object that cannot be pickled at all.
    """
    buffers = []

    def out_of_band(buf):
        # A false return sends the buffer out of band; small or non-contiguous ones stay
        # in the pickle stream.
        try:
            raw = buf.raw()
        except BufferError:
            return True
        if raw.nbytes < OOB_MIN:
            return True
        buffers.append(raw)
        return False

    callback = out_of_band if arena is not None and arena.enabled else None
    try:
        data = pickle.dumps(obj, 5, buffer_callback=callback)
        if _MAIN_MARK in data:
            # Something is pickled by reference to __main__, which in the other process is
            # a different module: pickle it by value instead.
            raise pickle.PicklingError("refers to __main__")
    except Exception:
        buffers.clear()
        data = cloudpickle.dumps(obj, 5, buffer_callback=callback)
    if not buffers:
        return data
    names = []
    try:
        for raw in buffers:
            names.append(arena.store(raw))
    except BaseException:
        for name in names:
            unlink(name)
        raise
    return (data, names)


def loads(payload, unlink_after: bool = False):
    """Inverse of :func:`dumps`. With ``unlink_after`` the buffer files are removed once
    mapped (the mappings stay valid)."""
    if type(payload) is bytes:
        return pickle.loads(payload)
    data, names = payload
    maps = [load_buffer(n) for n in names]
    if unlink_after:
        for n in names:
            unlink(n)
    return pickle.loads(data, buffers=maps)


def release(payload) -> None:
    """Remove the buffer files a payload refers to (nothing for an in-band payload or None):
    the sender's part once the payload will not be sent again."""
    if payload is not None and type(payload) is not bytes:
        for name in payload[1]:
            unlink(name)
