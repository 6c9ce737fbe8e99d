"""The native-library cache (compiler/cache.py): what a runner dlopens is what the artifact holds."""

import stat

from compiler.cache import cached_file


def test_a_cache_entry_is_reused_only_when_it_holds_the_artifacts_bytes(tmp_path):
    data = b"\x7fELF" + bytes(range(256)) * 8
    path = cached_file(tmp_path / "lib", data)
    assert path.read_bytes() == data
    first_inode = path.stat().st_ino
    assert cached_file(tmp_path / "lib", data) == path and path.stat().st_ino == first_inode  # reused
    # Someone rewrites the entry with other code of the same size: it is replaced, not loaded.
    path.write_bytes(bytes(len(data)))
    assert cached_file(tmp_path / "lib", data) == path
    assert path.read_bytes() == data
    # A truncated entry (a crashed writer of another tool) is replaced too.
    path.write_bytes(data[:10])
    assert cached_file(tmp_path / "lib", data).read_bytes() == data
    assert [p.name for p in (tmp_path / "lib").iterdir()] == [path.name]  # no temporary files left


def test_a_new_cache_directory_is_private_to_the_user(tmp_path):
    cached_file(tmp_path / "fresh", b"code")
    assert stat.S_IMODE((tmp_path / "fresh").stat().st_mode) & 0o077 == 0
