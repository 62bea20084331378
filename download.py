"""Fetch a file over HTTP(S) with verification and resume, and unpack archives safely.

``download_file`` writes to ``<dest>.part`` (resuming it with an HTTP Range request when a
previous attempt was cut off), checks size and sha256, and only then renames it to ``dest``; a
download that fails the check is deleted. ``extract_archive`` refuses links and any tar/zip
member that would land outside the target folder, and unpacks into a staging folder first, so an
interrupted or refused extraction leaves the target untouched.
"""
import collections
import gzip
import hashlib
import lzma
import os
import shutil
import stat
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib

from tqdm import tqdm

from errors import DatasetError

CHUNK = 1 << 20

Archive = collections.namedtuple('Archive', 'urls size sha256')  # mirrors of one file, pinned


class DownloadError(DatasetError):
    """A download could not be completed or did not match its pinned size/checksum."""


def sha256sum(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(CHUNK), b''):
            h.update(block)
    return h.hexdigest()


def _mismatch(path, size, sha256):
    """Return why ``path`` does not match the expected size/sha256, or None if it does."""
    actual = os.path.getsize(path)
    if size is not None and actual != size:
        return f'size {actual} bytes, expected {size} bytes'
    if sha256 is not None:
        digest = sha256sum(path)
        if digest != sha256.lower():
            return f'sha256 {digest}, expected {sha256}'
    return None


def _fetch(url, part, size, timeout, progress):
    """Append the rest of ``url`` to ``part`` (or start it over if the server ignores Range)."""
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    if size is not None and offset >= size:
        if offset == size:
            return
        os.remove(part)  # longer than the real file: cannot be a prefix of it
        offset = 0
    headers = {'User-Agent': 'msrn-download'}
    if offset:
        headers['Range'] = f'bytes={offset}-'
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing left to send: the checksum decides
            return
        raise
    with resp:
        if offset and resp.status != 206:
            offset = 0  # server sent the whole file
        length = resp.headers.get('Content-Length')
        total = offset + int(length) if length is not None else size
        with open(part, 'ab' if offset else 'wb') as f, \
                tqdm(total=total, initial=offset, unit='B', unit_scale=True, unit_divisor=1024,
                     desc=os.path.basename(part[:-len('.part')]), disable=not progress) as bar:
            for block in iter(lambda: resp.read(CHUNK), b''):
                f.write(block)
                bar.update(len(block))
    if length is not None and os.path.getsize(part) != total:
        raise OSError(f'connection closed after {os.path.getsize(part)} of {total} bytes')


def download_file(urls, dest, sha256=None, size=None, timeout=60, progress=True):
    """Download the first of ``urls`` that works to ``dest`` and return ``dest``.

    An existing ``dest`` is checked, not fetched again. A partial ``dest.part`` from an earlier
    attempt is resumed. A download whose size or sha256 does not match is deleted; only
    ``dest.part`` and ``dest`` are ever written.
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    if os.path.exists(dest):
        why = _mismatch(dest, size, sha256)
        if why:
            raise DownloadError(f'{dest}: existing file does not match ({why}); delete it and run again '
                                f'to download it from {urls[0]}')
        return dest
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    part = dest + '.part'
    failures = []
    for url in urls:
        print(f'[download] {url} -> {dest}')
        try:
            _fetch(url, part, size, timeout, progress)
        except OSError as e:  # URLError, HTTPError and timeouts all are
            failures.append(f'{url}: {getattr(e, "reason", None) or e}')
            continue
        why = _mismatch(part, size, sha256)
        if why is None:
            os.replace(part, dest)
            return dest
        os.remove(part)
        failures.append(f'{url}: {why}, removed the download')
    resume = ' (run again to resume)' if os.path.exists(part) else ''
    raise DownloadError(f'downloading {dest} failed{resume}: {"; ".join(failures)}; '
                        f'or download {urls[0]} by hand and save it as {dest}')


def _check_name(archive, name):
    """Raise DownloadError if the member ``name`` is absolute or climbs out with ``..``."""
    clean = name.replace('\\', '/')
    parts = [p for p in clean.split('/') if p not in ('', '.')]
    if clean.startswith('/') or (parts and parts[0].endswith(':')) or '..' in parts:
        raise DownloadError(f'{archive}: refusing to extract {name!r}: it points outside the target folder')


def _check_tar_member(archive, member):
    """Raise DownloadError unless ``member`` is a regular file or folder inside the target folder.

    Links are refused, whatever they point to: checked one by one, a chain of them (``l1 -> .``,
    ``l1/l2 -> ..``, ``l1/l2/l3 -> ..``) leads out although each stays inside, and Pythons
    without tarfile's 'data' filter (< 3.11.4) would follow it. The dataset archives hold none.
    """
    _check_name(archive, member.name)
    if member.issym() or member.islnk():
        kind = 'symbolic' if member.issym() else 'hard'
        raise DownloadError(f'{archive}: refusing to extract {kind} link {member.name!r} -> {member.linkname!r}: '
                            f'archives with links are not supported; unpack it by hand if you trust it')
    if not (member.isfile() or member.isdir()):
        raise DownloadError(f'{archive}: refusing to extract {member.name!r}: not a regular file or folder')


def _check_zip_member(archive, info):
    _check_name(archive, info.filename)
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DownloadError(f'{archive}: refusing to extract symbolic link {info.filename!r}')


def _check_tar_complete(archive, t):
    """Raise DownloadError if the tar ``t`` (members read) was cut short or fails its checksum.

    tarfile stops quietly when a cut falls between two members, and reads a compressed stream only
    as far as the last member: ask for the end-of-archive block that tar writers add, and read on
    to the end so that gzip, bz2 and xz verify their checksums.
    """
    t.fileobj.seek(t.offset)
    if t.fileobj.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
        raise DownloadError(f'{archive}: corrupt archive (it ends before its end-of-archive block); '
                            f'delete it and run again')
    while t.fileobj.read(CHUNK):
        pass


def _unpack(archive, dest):
    """Check every member of the zip or tar ``archive``, then unpack it into the folder ``dest``."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():
                    _check_zip_member(archive, info)
                z.extractall(dest)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                members = t.getmembers()
                for member in members:
                    _check_tar_member(archive, member)
                _check_tar_complete(archive, t)
                # the 'data' filter (Python >= 3.11.4) also drops special permissions and ownership
                safe = {'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}
                t.extractall(dest, members=members, **safe)
        else:
            raise DownloadError(f'{archive}: not a zip or tar archive; delete it and run again')
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError) as e:
        raise DownloadError(f'{archive}: corrupt archive ({e}); delete it and run again') from e


def _merge(src, dst, backup, undo):
    """Move the tree ``src`` into the folder ``dst``, merging folders that exist in both.

    A file that the archive replaces is first moved into the folder ``backup``. Every move is
    appended to ``undo`` so that ``_roll_back`` can return ``dst`` to what it was.
    """
    for name in sorted(os.listdir(src)):
        s, d = os.path.join(src, name), os.path.join(dst, name)
        if os.path.isdir(s) and os.path.isdir(d):
            _merge(s, d, backup, undo)
            continue
        if os.path.isdir(d) or (os.path.isdir(s) and os.path.lexists(d)):
            has, gets = ('folder', 'file') if os.path.isdir(d) else ('file', 'folder')
            raise DownloadError(f'{d}: is a {has} but the archive has a {gets} there; move it away and run again')
        if os.path.lexists(d):
            _move(d, os.path.join(backup, str(len(undo))), undo)
        _move(s, d, undo)


def _move(src, dst, undo):
    shutil.move(src, dst)
    undo.append((dst, src))


def _roll_back(undo):
    """Undo the moves ``_merge`` made, last first."""
    for moved_to, came_from in reversed(undo):
        shutil.move(moved_to, came_from)


def extract_archive(archive, root):
    """Unpack a .zip or .tar[.gz|.bz2|.xz] into ``root``; refuse links and members that escape it.

    The archive is unpacked into a staging folder inside ``root``, then moved into place. If
    anything fails or is interrupted (an error, Ctrl-C) the moves are undone, so ``root`` is left
    as it was; files the archive replaces are deleted only once everything is in place.
    """
    print(f'[download] extracting {archive} to {root}')
    os.makedirs(root, exist_ok=True)
    staging = os.path.join(root, '.extract-' + os.path.basename(archive))
    shutil.rmtree(staging, ignore_errors=True)  # leftover of a run that was killed
    unpacked, replaced = os.path.join(staging, 'unpacked'), os.path.join(staging, 'replaced')
    os.makedirs(unpacked)
    os.makedirs(replaced)
    undo = []
    try:
        _unpack(archive, unpacked)
        _merge(unpacked, root, replaced, undo)
    except BaseException:
        _roll_back(undo)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download_and_extract(archive, root):
    """Download (or resume) ``archive`` into ``<root>/downloads/`` and extract it into ``root``."""
    path = os.path.join(root, 'downloads', os.path.basename(archive.urls[0]))
    download_file(archive.urls, path, sha256=archive.sha256, size=archive.size)
    extract_archive(path, root)
