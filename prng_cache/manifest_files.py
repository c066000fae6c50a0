"""The manifest's files on a node: reading, decoding and writing
``manifest.msgpack`` and, for a sharded manifest, its shard directory
(formats: :mod:`prng_cache.manifest`). A part of
:class:`~prng_cache.ownership.CacheRoot`, which supplies the transport
(``t``), ``path``, ``host``, the root's ``token``/``tokens``, ``tmp_name``,
``_uid`` and the trash helpers."""

from __future__ import annotations

import contextlib
import errno
import logging
import secrets

from .manifest import (MANIFEST_NAME, MAX_MANIFEST_BYTES, MAX_SHARD_BYTES, SHARD_DIR_PREFIX, Manifest, Shards,
                       decode, shard_target)

log = logging.getLogger("prng_cache.ownership")


class ManifestFiles:
    def _read_manifest(self) -> tuple[bytes | None, str | None]:
        try:
            return self.t.read_bytes(self.path(MANIFEST_NAME), MAX_MANIFEST_BYTES + 1), None
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            return None, f"manifest unreadable ({exc})"

    def _manifest_of(self, data: bytes | None, reset: str | None, keys_listed: bool,
                     warn: bool) -> tuple[Manifest, str | None]:
        manifest = None
        if data is not None:
            if len(data) > MAX_MANIFEST_BYTES:
                reset = "manifest larger than any prng-cache writes"
            else:
                manifest, reset = decode(data, self._shard_reader)
        elif reset is None and keys_listed:
            reset = "manifest missing"
        if manifest is None:
            if reset and warn:
                log.warning("%s: %s; starting a new manifest, existing entries are not trusted",
                            self.host, reset)
            manifest = Manifest.new()
        return manifest, reset

    def _shard_reader(self, gen: str):
        """Reads shards of generation ``gen`` (for :class:`~prng_cache.manifest.Shards`);
        nothing is read from a shard directory that is not a real private
        directory of ours (every shard of it is then distrusted)."""
        name = SHARD_DIR_PREFIX + gen
        folder = self.path(name)

        def read(indices: list[int]) -> dict:
            if not self._shard_dir_ok(name):
                return {i: NotADirectoryError(errno.ENOTDIR, "not a shard directory of ours", folder)
                        for i in indices}
            paths = {i: f"{folder}/{Shards.filename(i)}" for i in indices}
            got = self.t.read_many(list(paths.values()), MAX_SHARD_BYTES + 1)
            return {i: got[p] for i, p in paths.items()}
        return read

    def _shard_dir_ok(self, name: str) -> bool:
        """``name`` in the root is a real directory of ours that only we can
        write (never read or written through a symlink)."""
        info = self.t.lstat(self.path(name))
        uid = self.t.uid() if self._uid is None else self._uid
        return (info is not None and info.is_dir and not info.is_symlink and info.uid == uid
                and not info.perms & 0o022)

    def write_manifest(self, m: Manifest) -> bool:
        """Write what changed, atomically per file: a reader sees the old or
        the new version of each, never half. Call under the lock. A sharded
        manifest: the shards that changed, then the header (its serial
        bumped); a new generation of shards goes to a new directory, the old
        one is removed after the header no longer names it. False when
        nothing changed (nothing written)."""
        if self.tokens:  # lets a small stage find the token without listing the root
            m.root_token = min(self.tokens)
        sh = m.entries.shards
        old_dir = sh.dirname if sh is not None else None
        target = shard_target(m.entries.count_hint(), sh.n if sh is not None else 0)
        if target == 0:
            if sh is not None:
                m.entries.unshard()
            data = m.to_bytes()
            if data == m.origin:
                return False
            self._replace(MANIFEST_NAME, data)
        else:
            # a new generation also when the current one cannot be written in
            # place: a shard that was unreadable (or a directory, a FIFO...),
            # or its directory gone or not ours
            if (sh is None or target != sh.n or not sh.gen.startswith(self.token + "-") or sh.bad
                    or not self._shard_dir_ok(sh.dirname)):
                m.entries.reshard(f"{self.token}-{secrets.token_hex(4)}", target)
                self.t.mkdir(self.path(m.entries.shards.dirname), 0o700)
            changed = m.entries.changed_shards()
            if not changed and m.header_bytes() == m.origin:
                return False
            folder = m.entries.shards.dirname
            self.t.replace_files([(self.path(self.tmp_name("manifest")), self.path(folder, Shards.filename(i)),
                                   data, 0o600) for i, data in changed.items()])
            m.serial += 1
            data = m.header_bytes()
            self._replace(MANIFEST_NAME, data)
        m.origin = data
        if old_dir is not None and old_dir != self.shard_dir_of(m) and self._shard_dir_ok(old_dir):
            # no longer named by the header: a reader still using the old
            # header finds its shards gone, and trusts nothing of them (what
            # is not a directory of ours there is left alone)
            self.empty_trash([g for g in [self._to_trash(old_dir)] if g is not None])
        return True

    @staticmethod
    def shard_dir_of(m: Manifest) -> str | None:
        sh = m.entries.shards
        return sh.dirname if sh is not None else None

    def _replace(self, name: str, data: bytes) -> None:
        """``name`` (relative to the root) replaced by ``data``: temp + rename."""
        tmp = self.path(self.tmp_name("manifest"))
        try:
            with self.t.open_write(tmp, 0o600) as f:
                f.write(data)
            self.t.rename(tmp, self.path(name))
        except BaseException:
            with contextlib.suppress(Exception):
                self.t.unlink(tmp)
            raise
