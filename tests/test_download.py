import hashlib
import io
import os
import random
import shutil
import tarfile
import zipfile

import pytest

import download
from download import DownloadError, download_file, extract_archive

PAYLOAD = bytes(range(256)) * 400  # 100 KiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def tree(root):
    """Every path under root with its content (None for folders), to show nothing else changed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = open(p, 'rb').read()
    return out


def test_download_verifies_and_renames(http_server, tmp_path):
    http_server.files['/a.bin'] = PAYLOAD
    dest = tmp_path / 'sub' / 'a.bin'
    got = download_file(http_server.url('/a.bin'), str(dest), sha256=SHA, size=len(PAYLOAD), progress=False)
    assert got == str(dest)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / 'sub' / 'a.bin.part').exists()
    # an existing verified file is not fetched again
    download_file(http_server.url('/a.bin'), str(dest), sha256=SHA, progress=False)
    assert len(http_server.requests) == 1


def test_interrupted_download_resumes_with_range(http_server, tmp_path):
    http_server.files['/a.bin'] = PAYLOAD
    http_server.cut['/a.bin'] = 30000
    dest = str(tmp_path / 'a.bin')
    with pytest.raises(DownloadError, match='run again to resume'):
        download_file(http_server.url('/a.bin'), dest, sha256=SHA, progress=False)
    assert os.path.getsize(dest + '.part') == 30000 and not os.path.exists(dest)
    download_file(http_server.url('/a.bin'), dest, sha256=SHA, progress=False)
    assert http_server.requests[-1] == ('/a.bin', 'bytes=30000-')
    assert open(dest, 'rb').read() == PAYLOAD


def test_server_without_range_restarts_from_zero(http_server, tmp_path):
    http_server.files['/a.bin'] = PAYLOAD
    http_server.honour_range = False
    dest = str(tmp_path / 'a.bin')
    with open(dest + '.part', 'wb') as f:
        f.write(PAYLOAD[:1000])
    download_file(http_server.url('/a.bin'), dest, sha256=SHA, progress=False)
    assert open(dest, 'rb').read() == PAYLOAD


def test_checksum_mismatch_removes_partial_and_nothing_else(http_server, tmp_path):
    http_server.files['/a.bin'] = PAYLOAD[:-1] + b'X'
    (tmp_path / 'keep.txt').write_text('mine')
    (tmp_path / 'a.bin.other').write_text('also mine')
    before = tree(tmp_path)
    with pytest.raises(DownloadError) as e:
        download_file(http_server.url('/a.bin'), str(tmp_path / 'a.bin'), sha256=SHA, progress=False)
    msg = str(e.value)
    assert '\n' not in msg and str(tmp_path / 'a.bin') in msg and 'expected ' + SHA in msg
    assert tree(tmp_path) == before


def test_wrong_size_is_rejected_before_hashing(http_server, tmp_path, monkeypatch):
    http_server.files['/a.bin'] = PAYLOAD
    hashed = []
    monkeypatch.setattr(download, 'sha256sum', lambda path: hashed.append(path) or SHA)
    with pytest.raises(DownloadError, match='expected 5 bytes'):
        download_file(http_server.url('/a.bin'), str(tmp_path / 'a.bin'), sha256=SHA, size=5, progress=False)
    assert hashed == [] and os.listdir(tmp_path) == []


def test_falls_back_to_the_next_url(http_server, tmp_path):
    http_server.files['/mirror.bin'] = PAYLOAD
    dest = str(tmp_path / 'a.bin')
    download_file([http_server.url('/missing.bin'), http_server.url('/mirror.bin')], dest, sha256=SHA, progress=False)
    assert open(dest, 'rb').read() == PAYLOAD


def test_server_that_hangs_up_gives_one_line(http_server, tmp_path):
    http_server.hang_up.add('/a.bin')
    with pytest.raises(DownloadError) as e:
        download_file(http_server.url('/a.bin'), str(tmp_path / 'a.bin'), progress=False, timeout=5)
    assert '\n' not in str(e.value) and 'by hand' in str(e.value)
    assert http_server.requests == [('/a.bin', None)] and os.listdir(tmp_path) == []


def test_existing_bad_file_is_reported_not_deleted(http_server, tmp_path):
    dest = tmp_path / 'a.bin'
    dest.write_bytes(b'not it')
    with pytest.raises(DownloadError, match='delete it'):
        download_file(http_server.url('/a.bin'), str(dest), sha256=SHA, progress=False)
    assert dest.read_bytes() == b'not it' and http_server.requests == []


def make_tar(path, members):
    """members: list of (name, bytes) files or (name, ('sym'|'hard', target)) links."""
    with tarfile.open(path, 'w') as t:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if isinstance(content, tuple):
                info.type = tarfile.SYMTYPE if content[0] == 'sym' else tarfile.LNKTYPE
                info.linkname = content[1]
                t.addfile(info)
            else:
                info.size = len(content)
                t.addfile(info, io.BytesIO(content))


def test_extracts_tar_and_merges_into_existing_folders(tmp_path):
    root = tmp_path / 'root'
    make_tar(tmp_path / 'one.tar', [('top/a/x.txt', b'x'), ('top/c.txt', b'c')])
    make_tar(tmp_path / 'two.tar', [('top/a/y.txt', b'y'), ('top/b/z.txt', b'z'), ('top/c.txt', b'new')])
    extract_archive(str(tmp_path / 'one.tar'), str(root))
    extract_archive(str(tmp_path / 'two.tar'), str(root))
    assert tree(root) == {'top': None, 'top/a': None, 'top/b': None, 'top/a/x.txt': b'x', 'top/a/y.txt': b'y',
                          'top/b/z.txt': b'z', 'top/c.txt': b'new'}  # no staging folder left


CHAINED_LINKS = [('l1', ('sym', '.')), ('l1/l2', ('sym', '..')), ('l1/l2/l3', ('sym', '..')),
                 ('l1/l2/l3/evil.txt', b'2')]  # each link stays inside; together they climb two up


@pytest.mark.parametrize('data_filter', [True, False], ids=['data-filter', 'no-data-filter'])
@pytest.mark.parametrize('members', [
    [('ok.txt', b'1'), ('../evil.txt', b'2')],
    [('/tmp/evil.txt', b'2')],
    [('a/../../evil.txt', b'2')],
    [('link', ('sym', '../outside'))],
    [('link', ('sym', '/etc/passwd'))],
    [('d/link', ('sym', '../../outside'))],
    [('hard', ('hard', '../outside'))],
    [('a/x.txt', b'x'), ('inside', ('sym', 'a/x.txt'))],
    [('a/x.txt', b'x'), ('inside', ('hard', 'a/x.txt'))],
    CHAINED_LINKS,
], ids=['dotdot', 'absolute', 'nested-dotdot', 'symlink-up', 'symlink-abs', 'symlink-nested', 'hardlink',
        'symlink-inside', 'hardlink-inside', 'chained-symlinks'])
def test_tar_links_and_members_escaping_root_are_refused(tmp_path, monkeypatch, members, data_filter):
    if not data_filter:  # as on Python < 3.11.4, where nothing behind our own check stops a link
        monkeypatch.delattr(tarfile, 'data_filter', raising=False)
    root = tmp_path / 'a' / 'b' / 'root'  # room for the chained links to climb without leaving tmp_path
    root.mkdir(parents=True)
    (root / 'existing.txt').write_text('keep')
    make_tar(tmp_path / 'bad.tar', members)
    before = tree(tmp_path)
    with pytest.raises(DownloadError, match='refusing') as e:
        extract_archive(str(tmp_path / 'bad.tar'), str(root))
    assert '\n' not in str(e.value)
    assert tree(tmp_path) == before


def test_zip_extraction_and_refusals(tmp_path):
    root = tmp_path / 'root'
    with zipfile.ZipFile(tmp_path / 'good.zip', 'w') as z:
        z.writestr('train2014/a.jpg', b'a')
    extract_archive(str(tmp_path / 'good.zip'), str(root))
    assert (root / 'train2014/a.jpg').read_bytes() == b'a'

    with zipfile.ZipFile(tmp_path / 'up.zip', 'w') as z:
        z.writestr('fine.txt', b'1')
        z.writestr('..\\evil.txt', b'2')
    info = zipfile.ZipInfo('link')
    info.external_attr = (0o120777 << 16)
    with zipfile.ZipFile(tmp_path / 'sym.zip', 'w') as z:
        z.writestr(info, '../outside')
    before = tree(tmp_path)
    for bad in ('up.zip', 'sym.zip'):
        with pytest.raises(DownloadError, match='refusing'):
            extract_archive(str(tmp_path / bad), str(root))
    assert tree(tmp_path) == before


def test_interrupted_extraction_leaves_root_unchanged(tmp_path, monkeypatch):
    root = tmp_path / 'root'
    (root / 'top').mkdir(parents=True)
    (root / 'top/c.txt').write_text('old')
    make_tar(tmp_path / 'x.tar', [('top/a.txt', b'a'), ('top/c.txt', b'new'), ('top/d.txt', b'd')])
    before = tree(tmp_path)
    written = []

    def disk_full_at_second_file(self, tarinfo, targetpath):
        written.append(targetpath)
        if len(written) == 2:
            raise OSError(28, 'No space left on device')
        return real_makefile(self, tarinfo, targetpath)
    real_makefile = tarfile.TarFile.makefile
    monkeypatch.setattr(tarfile.TarFile, 'makefile', disk_full_at_second_file)
    with pytest.raises(OSError, match='No space left'):
        extract_archive(str(tmp_path / 'x.tar'), str(root))
    assert len(written) == 2 and tree(tmp_path) == before  # no .extract-* folder either


MERGE_ROOT = {'top/a/old.txt': b'old', 'top/c.txt': b'old c', 'keep.txt': b'k'}
MERGE_ARCHIVE = [('top/a/x.txt', b'x'), ('top/b/z.txt', b'z'), ('top/c.txt', b'new c'), ('zz.txt', b'zz')]


def write_tree(root, files):
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)


def test_interrupted_merge_is_rolled_back_at_every_step(tmp_path, monkeypatch):
    root = tmp_path / 'root'
    write_tree(root, MERGE_ROOT)
    make_tar(tmp_path / 'x.tar', MERGE_ARCHIVE)
    before = tree(tmp_path)
    real_move = shutil.move
    moves = 5  # x.txt, b/, c.txt backed up, c.txt, zz.txt
    for interrupt_at in range(1, moves + 1):
        calls = []

        def move(src, dst):
            calls.append(src)
            if len(calls) == interrupt_at:
                raise KeyboardInterrupt
            return real_move(src, dst)
        monkeypatch.setattr(shutil, 'move', move)
        with pytest.raises(KeyboardInterrupt):
            extract_archive(str(tmp_path / 'x.tar'), str(root))
        assert tree(tmp_path) == before, f'interrupted at move {interrupt_at}'
    monkeypatch.setattr(shutil, 'move', real_move)
    extract_archive(str(tmp_path / 'x.tar'), str(root))
    assert tree(root) == {'top': None, 'top/a': None, 'top/b': None, 'keep.txt': b'k', 'top/a/old.txt': b'old',
                          'top/a/x.txt': b'x', 'top/b/z.txt': b'z', 'top/c.txt': b'new c', 'zz.txt': b'zz'}


def test_file_where_root_has_a_folder_is_refused_and_rolled_back(tmp_path):
    root = tmp_path / 'root'
    write_tree(root, {'top/b/mine.txt': b'm'})
    make_tar(tmp_path / 'x.tar', [('top/a.txt', b'a'), ('top/b', b'a file')])
    before = tree(tmp_path)
    with pytest.raises(DownloadError, match='is a folder but the archive has a file there') as e:
        extract_archive(str(tmp_path / 'x.tar'), str(root))
    assert str(root / 'top/b') in str(e.value)
    assert tree(tmp_path) == before  # top/a.txt, moved first, was taken back


def real_tar(path, mode):
    """A tar of three 5000-byte random files, as tar writers make it (end-of-archive blocks)."""
    with tarfile.open(path, mode) as t:
        for i in range(3):
            data = random.Random(i).randbytes(5000)
            info = tarfile.TarInfo(f'data/f{i}.bin')
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path.read_bytes()


@pytest.mark.parametrize('mode,damage', [
    ('w', lambda raw: raw[:3000]),  # inside the first file's data
    ('w', lambda raw: raw[:512 + 5120]),  # right after the first member: tarfile alone sees no error
    ('w:gz', lambda raw: raw[:len(raw) // 2]),
    ('w:gz', lambda raw: raw[:len(raw) // 2] + bytes([raw[len(raw) // 2] ^ 1]) + raw[len(raw) // 2 + 1:]),
], ids=['tar-cut-in-data', 'tar-cut-between-members', 'tgz-cut', 'tgz-bit-flip'])
def test_truncated_or_damaged_tar_is_a_one_line_corrupt_archive_error(tmp_path, mode, damage):
    archive = tmp_path / 'x.tar'
    archive.write_bytes(damage(real_tar(archive, mode)))
    root = tmp_path / 'root'
    write_tree(root, {'keep.txt': b'k'})
    before = tree(tmp_path)
    with pytest.raises(DownloadError) as e:
        extract_archive(str(archive), str(root))
    assert 'corrupt archive' in str(e.value) and 'delete it and run again' in str(e.value)
    assert '\n' not in str(e.value) and tree(tmp_path) == before


def test_corrupt_archive_is_one_line(tmp_path):
    (tmp_path / 'x.tar').write_bytes(b'garbage' * 100)
    with pytest.raises(DownloadError) as e:
        extract_archive(str(tmp_path / 'x.tar'), str(tmp_path / 'root'))
    assert 'not a zip or tar' in str(e.value) and '\n' not in str(e.value)
