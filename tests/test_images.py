import pytest

from aikd.data.images import ImageReadError, read_rgb


def test_truncated_jpeg_is_an_error_not_a_half_grey_face(tmp_path, lfw_root, lfw_sample):
    """Older OpenCV builds decoded a cut JPEG with grey rows; a face that is half missing
    must be an error that names the file."""
    src = lfw_root / lfw_sample["path"].iloc[0]
    data = src.read_bytes()
    for frac in (0.6, 0.95):
        cut = tmp_path / f"cut{frac}.jpg"
        cut.write_bytes(data[: int(len(data) * frac)])
        with pytest.raises(ImageReadError, match=rf"cut{frac}\.jpg: not a decodable image"):
            read_rgb(cut)
    whole = tmp_path / "whole.jpg"
    whole.write_bytes(data + b"\x00" * 16)  # padding after the end marker is harmless
    assert read_rgb(whole).shape == read_rgb(src).shape


def test_garbage_and_empty_files_name_the_file(tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8 not really a jpeg \xff\xd9")
    with pytest.raises(ImageReadError, match="junk.jpg: not a decodable image"):
        read_rgb(junk)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.png: file is empty"):
        read_rgb(empty)
