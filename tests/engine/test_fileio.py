"""engine.fileio: whole files and folders or nothing, no temporary left behind, the user's umask for permissions."""
import os
import stat

import pytest

from engine.fileio import atomic_file, atomic_folder, atomic_write_bytes, atomic_write_text, staging_folder


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_and_folders_get_the_umask_permissions(tmp_path, umask):
    atomic_write_text(tmp_path / "a.json", "{}\n")
    with atomic_folder(tmp_path / "frames") as tmp:
        (tmp / "frame_0.png").write_bytes(b"png")
    assert mode(tmp_path / "a.json") == 0o666 & ~umask
    assert mode(tmp_path / "frames") == 0o777 & ~umask
    assert mode(tmp_path / "frames" / "frame_0.png") == 0o666 & ~umask


def test_a_file_is_replaced_whole_or_kept(tmp_path):
    path = tmp_path / "sub" / "x.bin"
    atomic_write_bytes(path, b"first")
    atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second"
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert path.read_bytes() == b"second" and sorted(p.name for p in path.parent.iterdir()) == ["x.bin"]


def test_a_folder_is_swapped_in_whole_or_kept(tmp_path):
    folder = tmp_path / "frames"
    for content in (b"old", b"new"):
        with atomic_folder(folder) as tmp:
            (tmp / "f.png").write_bytes(content)
    assert [p.read_bytes() for p in folder.iterdir()] == [b"new"]
    with pytest.raises(RuntimeError), atomic_folder(folder) as tmp:
        (tmp / "g.png").write_bytes(b"half")
        raise RuntimeError("boom")
    assert [p.name for p in folder.iterdir()] == ["f.png"] and [p.name for p in tmp_path.iterdir()] == ["frames"]


def test_a_staging_folder_is_removed_at_the_end(tmp_path):
    with staging_folder(tmp_path / "model.onnx") as stage:
        (stage / "model.onnx").write_bytes(b"onnx")
        os.replace(stage / "model.onnx", tmp_path / "model.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
