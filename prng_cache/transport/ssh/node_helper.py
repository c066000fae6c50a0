"""The node's half of a batch: run ON THE NODE by its ``python3``, fed over
one exec channel (see :mod:`.helper`). Standard library only, Python 3.6+.

Like rsync's remote half: thousands of small files or directory listings
cost one stream instead of a round trip (and a packet built in Python) per
SFTP request. It does exactly what the SFTP requests would do, no more:
create a directory and files exclusively with exact modes, rename into
place, list directories with lstat. Nothing here decides what is safe to
serve; the coordinator still judges every listing itself.

Protocol (stdin/stdout, binary): the helper prints ``HELLO``; then per
request one JSON line (paths and names as hex of their bytes: a node's
file names need not be UTF-8), for ``put`` followed by the raw bytes of
every file in order; per request one JSON line answered (for ``put``
preceded by a "." per item, for ``read`` followed by the files' bytes).
EOF ends it.
"""

import binascii
import errno
import json
import os
import stat
import sys
import time
import zlib

HELLO = b"prng-cache-helper 1\n"


def _b(h):
    return binascii.unhexlify(h)


def _h(b):
    return binascii.hexlify(b).decode("ascii")


def _info(st):
    return [st.st_mode, st.st_nlink, st.st_uid, st.st_size, st.st_mtime]


def _err(op, e, path):
    return [op, e.errno or errno.EIO, e.strerror or str(e), _h(path)]


def _listing(path, keep=None):
    """[name, info] of every child of ``path``, lstat'ed, or an error.
    ``keep``: a dict also given name -> its lstat result."""
    out = []
    for name in os.listdir(path):
        try:
            st = os.lstat(os.path.join(path, name))
        except FileNotFoundError:
            continue  # gone meanwhile: as if listed a moment later
        if keep is not None:
            keep[name] = st
        out.append([_h(name), _info(st)])
    return out


def op_ls(req):
    """One directory with its children's lstat (like SFTP readdir)."""
    path = _b(req["dir"])
    try:
        return {"items": _listing(path)}
    except OSError as e:
        return {"error": _err("listdir", e, path)}


def _in_dir(fd, names):
    """[name, info] of ``names`` (bytes) in the directory open as ``fd``,
    lstat'ed relative to it; the missing ones left out."""
    out = []
    for name in names:
        if b"/" in name or name in (b"", b".", b".."):
            continue  # never a file of an entry (the coordinator sends none)
        try:
            st = os.lstat(name, dir_fd=fd)
        except FileNotFoundError:
            continue  # missing (or gone meanwhile): as a listing without it
        out.append([_h(name), _info(st)])
    return out


def op_list(req, known=None):
    """Many directories of one parent: per name its lstat and, when it is a
    real directory, its children (a symlink is reported, never followed).
    ``req["children"]`` (optional, one list per name): only those children.
    ``known``: lstat results of the parent's children taken just before.

    Each directory is opened (never through a symlink) and its children
    are lstat'ed relative to that descriptor: one swapped for a symlink
    since it was lstat'ed is reported as what it is now, not followed."""
    parent = _b(req["dir"])
    children = req.get("children")
    out = []
    for i, hname in enumerate(req["names"]):
        name = _b(hname)
        path = os.path.join(parent, name)
        try:
            st = known.get(name) if known is not None else None
            if st is None:
                st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                out.append([hname, _info(st), None])
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                st = os.lstat(path)  # not a real directory any more
                out.append([hname, _info(st), None])
                continue
            try:
                st = os.fstat(fd)
                wanted = [_b(c) for c in children[i]] if children is not None else [
                    os.fsencode(n) for n in os.listdir(fd)]
                out.append([hname, _info(st), _in_dir(fd, wanted)])
            finally:
                os.close(fd)
        except OSError as e:
            out.append([hname, None, _err("listdir", e, path)])
    return {"items": out}


def op_survey(req):
    """A root's listing and some of its directories' (op_list), in one pass."""
    parent = _b(req["dir"])
    known = {}
    try:
        root = _listing(parent, known)
    except OSError as e:
        return {"error": _err("listdir", e, parent)}
    ans = op_list(req, known)
    ans["root"] = root
    return ans


def op_read(req):
    """Small regular files, whole: per path its size (then its bytes follow
    the answer line, in order), None when absent, -1 when it is anything
    else (not a regular file, a symlink, too large, changed while read):
    the coordinator then reads it the ordinary way, which judges it."""
    sizes, data = [], []
    limit = req["max"]
    for hpath in req["paths"]:
        path = _b(hpath)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            sizes.append(None)
            continue
        except OSError:
            sizes.append(-1)
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_size >= limit:
            sizes.append(-1)
            continue
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            sizes.append(-1)
            continue
        try:
            after = os.fstat(fd)
            chunks, n = [], 0
            while n <= st.st_size:
                b = os.read(fd, st.st_size + 1 - n)
                if not b:
                    break
                chunks.append(b)
                n += len(b)
        except OSError:
            chunks, n = None, -1
        finally:
            os.close(fd)
        if (chunks is None or n != st.st_size or not stat.S_ISREG(after.st_mode)
                or (after.st_dev, after.st_ino) != (st.st_dev, st.st_ino)):
            sizes.append(-1)
            continue
        sizes.append(n)
        data.extend(chunks)
    return {"sizes": sizes}, data


def _read_exact(inp, n):
    chunks = []
    while n:
        b = inp.read(min(n, 1 << 20))
        if not b:
            raise EOFError("input ended inside a request")
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


def _write_new(path, data, mode, crc):
    """A new file ``path`` (exclusively, never through a symlink, exactly
    ``mode``: umask is 0) holding ``data``, which must match ``crc`` (a
    framing fault, never a node's, refuses it). None, or the failure."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    except OSError as e:
        return _err("create", e, path)
    failure = None
    try:
        if zlib.crc32(data) & 0xFFFFFFFF != crc:
            raise OSError(errno.EIO, "bytes received differ from the bytes sent")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as e:
        failure = _err("write", e, path)
    finally:
        try:
            os.close(fd)
        except OSError as e:
            if failure is None:
                failure = _err("close", e, path)
    return failure


MARK_EVERY = 0.05
_flushed = [float("-inf")]  # when the marks were last sent


def _put_item(item, inp, out):
    """Create ``tmp`` (exclusively) with every file (exclusively, exact
    mode, CRC checked before it is written), then rename it to ``dst``. The
    bytes of every file are consumed even after a failure, so the stream
    stays in step."""
    # a "." per item, sent at most every MARK_EVERY seconds (one SSH packet
    # per item cost the coordinator more CPU than the files): if the
    # coordinator gave up on us (we were stopped, it timed out and closed
    # the channel), the flush fails and we exit, creating nothing more after
    # at most that long (the first item of a request always flushes)
    out.write(b".")
    now = time.monotonic()
    if now - _flushed[0] >= MARK_EVERY:
        out.flush()
        _flushed[0] = now
    tmp = _b(item["tmp"])
    failure = None
    try:
        os.mkdir(tmp, item["mode"])  # exact: umask is 0 (main)
    except OSError as e:
        failure = _err("mkdir", e, tmp)
    for hname, size, mode, crc in item["files"]:
        data = _read_exact(inp, size)
        if failure is not None:
            continue
        failure = _write_new(os.path.join(tmp, _b(hname)), data, mode, crc)
    if failure is None and item.get("dst"):
        dst = _b(item["dst"])
        try:
            _rename_noreplace(tmp, dst)
        except OSError as e:
            failure = _err("rename", e, tmp)
    return failure


_renameat2 = []


def _rename_noreplace(src, dst):
    """rename(2) would replace an empty directory someone put at ``dst``
    meanwhile: renameat2(RENAME_NOREPLACE) refuses (EEXIST) instead. Where
    the kernel or libc lacks it, an lstat just before is the best there is."""
    if not _renameat2:
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            _renameat2.append((ctypes, libc.renameat2))
        except Exception:
            _renameat2.append(None)
    if _renameat2[0] is not None:
        ctypes, fn = _renameat2[0]
        if fn(-100, src, -100, dst, 1) == 0:  # AT_FDCWD, RENAME_NOREPLACE
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err))
    if os.path.lexists(dst):
        raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
    os.rename(src, dst)


def _dir_fd(path, fds):
    """``path`` opened as a real directory of ours (never through a
    symlink: one swapped in after the coordinator checked it would have a
    rename write into someone else's directory), cached in ``fds``."""
    fd = fds.get(path)
    if fd is None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        if os.fstat(fd).st_uid != os.geteuid():
            os.close(fd)
            raise OSError(errno.EPERM, "not a directory of ours")
        fds[path] = fd
    return fd


def op_replace(req, inp):
    """Per item: a new file ``tmp`` (exclusively, exact mode, CRC checked)
    renamed over ``dst``, as the SFTP requests would (a manifest's shards);
    ``dst`` is renamed into its directory opened without following a
    symlink. Every item's bytes are consumed even after a failure; a ``tmp``
    left by a failure is removed."""
    fds = {}
    try:
        return {"results": [_replace_item(item, inp, fds) for item in req["items"]]}
    finally:
        for fd in fds.values():
            os.close(fd)


def _replace_item(item, inp, fds):
    htmp, hdst, size, mode, crc = item
    data = _read_exact(inp, size)
    tmp = _b(htmp)
    failure = _write_new(tmp, data, mode, crc)
    if failure is not None and failure[0] == "create":
        return failure  # nothing of ours to remove
    if failure is None:
        dst = _b(hdst)
        try:
            os.rename(tmp, os.path.basename(dst), dst_dir_fd=_dir_fd(os.path.dirname(dst), fds))
        except OSError as e:
            failure = _err("rename", e, tmp)
    if failure is not None:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return failure


def op_put(req, inp, out):
    _flushed[0] = float("-inf")  # a request's first mark goes at once
    return {"results": [_put_item(item, inp, out) for item in req["items"]]}


def main():
    # modes given are exact (the SFTP path sets them explicitly too): no
    # chmod per file and directory
    os.umask(0)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    out.write(HELLO)
    out.flush()
    while True:
        line = inp.readline()
        if not line:
            return 0
        req = json.loads(line.decode("ascii"))
        op = req.get("op")
        if op == "put":
            ans = op_put(req, inp, out)
        elif op == "list":
            ans = op_list(req)
        elif op == "ls":
            ans = op_ls(req)
        elif op == "survey":
            ans = op_survey(req)
        elif op == "read":
            ans, data = op_read(req)
        elif op == "replace":
            ans = op_replace(req, inp)
        else:
            ans = {"error": ["request", errno.EINVAL, "unknown request", ""]}
        out.write(json.dumps(ans, separators=(",", ":")).encode("ascii") + b"\n")
        if op == "read":
            for b in data:
                out.write(b)
        out.flush()


if __name__ == "__main__":
    sys.exit(main())
