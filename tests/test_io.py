from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import wbc.io
from wbc.errors import ImageReadError, ImageTooLargeError
from wbc.io import MAX_PIXELS, atomic_write_csv, decode_image, image_size, iter_image_paths, read_image
from wbc.synthetic import synthetic_cell


def _write(path: Path, arr: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), arr)
    return path


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp", ".tif"])
def test_reads_every_format_as_rgb(tmp_path: Path, ext: str) -> None:
    bgr = np.zeros((20, 30, 3), np.uint8)
    bgr[..., 2] = 200  # red in BGR
    img = read_image(_write(tmp_path / f"a{ext}", bgr))
    assert img.shape == (20, 30, 3) and img.dtype == np.uint8
    assert img[..., 0].mean() > 150 and img[..., 2].mean() < 50  # red is channel 0 after reading


def test_grey_16bit_and_rgba_are_converted(tmp_path: Path) -> None:
    grey16 = (np.arange(100, dtype=np.uint16).reshape(10, 10) * 600).astype(np.uint16)
    img = read_image(_write(tmp_path / "g16.png", grey16))
    assert img.shape == (10, 10, 3) and img.dtype == np.uint8
    assert img[..., 0].max() == round(99 * 600 / 257)
    bgra = np.zeros((8, 8, 4), np.uint8)
    bgra[..., 3] = 0  # fully transparent -> white
    assert read_image(_write(tmp_path / "t.png", bgra)).min() == 255


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_a_twelve_bit_camera_image_in_a_16bit_file_reads_as_bright_as_at_8_bits(tmp_path: Path, ext: str) -> None:
    """A scientific camera's 16-bit file holding 12-bit samples (0-4095) used to be divided by 257: almost black."""
    rgb = synthetic_cell("neutrophil", 96, seed=3)
    eight = read_image(_write(tmp_path / f"c8{ext}", rgb[:, :, ::-1]))
    twelve = read_image(_write(tmp_path / f"c12{ext}", rgb[:, :, ::-1].astype(np.uint16) * 16))
    assert np.abs(twelve.astype(int) - eight.astype(int)).max() <= 1
    full = read_image(_write(tmp_path / f"c16{ext}", rgb[:, :, ::-1].astype(np.uint16) * 257))  # full 16-bit range
    assert np.array_equal(full, eight)
    tiny = read_image(_write(tmp_path / f"c16_8bit{ext}", rgb[:, :, ::-1].astype(np.uint16)))  # 8-bit values
    assert np.array_equal(tiny, eight)


@pytest.mark.parametrize("kind", ["uint16", "float32", "uint16 rgba", "uint16 turned"])
def test_a_tiff_of_separate_colour_planes_at_more_than_8_bits_reads_as_its_pixels(tmp_path: Path, kind: str) -> None:
    """OpenCV and Pillow read a 16-bit TIFF with separate R, G and B planes (tifffile writes one for a (3, H, W)
    array, as microscope software does) as if interleaved: three grey copies side by side over noise, answered with
    a confident class. Alpha, float samples and the TIFF's orientation hold too."""
    tifffile = pytest.importorskip("tifffile")
    rgb = synthetic_cell("neutrophil", 96, seed=0)
    planes = np.moveaxis(rgb.astype(np.float32) / 255 if kind == "float32" else rgb.astype(np.uint16) * 257, 2, 0)
    kw: dict = {"photometric": "rgb"}
    if kind == "uint16 rgba":
        planes, kw["extrasamples"] = np.concatenate([planes, np.full((1, 96, 96), 65535, np.uint16)]), [2]
    if kind == "uint16 turned":
        kw["extratags"] = [(274, 3, 1, 6, False)]  # Orientation 6: shown turned 90 degrees clockwise
    tifffile.imwrite(tmp_path / "p.tif", planes, **kw)
    assert tifffile.TiffFile(tmp_path / "p.tif").pages[0].planarconfig == 2
    want = np.rot90(rgb, -1) if kind == "uint16 turned" else rgb
    assert np.abs(read_image(tmp_path / "p.tif").astype(int) - want).max() <= 1


def test_a_damaged_tiff_of_separate_colour_planes_is_one_line(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "p.tif", np.zeros((3, 64, 64), np.uint16), photometric="rgb", compression="zlib")
    data = (tmp_path / "p.tif").read_bytes()
    with pytest.raises(ImageReadError, match=r"^p\.tif: TIFF with separate colour planes .* could not be decoded"):
        decode_image(data[: len(data) // 2], "p.tif")  # cut inside its planes


def adobe_rgb_profile() -> bytes:
    """An ICC v2 matrix/TRC profile like Adobe RGB (1998), written by hand: Pillow can only make sRGB, Lab and XYZ
    profiles, and a test machine has no .icc files."""
    import struct

    def s15(*v: float) -> bytes:
        return b"".join(struct.pack(">i", round(x * 65536)) for x in v)

    name = b"Adobe RGB (1998)-like\0"
    tags = [(b"desc", b"desc" + bytes(4) + struct.pack(">I", len(name)) + name + bytes(79)),
            (b"cprt", b"text" + bytes(4) + b"none\0"), (b"wtpt", b"XYZ " + bytes(4) + s15(0.9642, 1.0, 0.82491)),
            (b"rXYZ", b"XYZ " + bytes(4) + s15(0.60974, 0.31111, 0.01947)),
            (b"gXYZ", b"XYZ " + bytes(4) + s15(0.20528, 0.62567, 0.06087)),
            (b"bXYZ", b"XYZ " + bytes(4) + s15(0.14919, 0.06322, 0.74457))]
    tags += [(t, b"curv" + bytes(4) + struct.pack(">IH", 1, 563) + bytes(2)) for t in (b"rTRC", b"gTRC", b"bTRC")]
    table, body, at = b"", b"", 128 + 4 + 12 * len(tags)
    for sig, data in tags:
        body += bytes(-(at + len(body)) % 4)
        table += sig + struct.pack(">II", at + len(body), len(data))
        body += data
    header = (struct.pack(">I", at + len(body)) + b"none" + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ "
              + bytes(12) + b"acspAPPL" + bytes(24) + s15(0.9642, 1.0, 0.8249) + b"none" + bytes(44))
    return header + struct.pack(">I", len(tags)) + table + body


def save_in_adobe_rgb(rgb: np.ndarray, path: Path, **kw: object) -> Path:
    """``rgb`` (sRGB) saved as a colour-managed editor saves it in Adobe RGB: other numbers, its profile embedded,
    the same colours on screen."""
    from PIL import Image, ImageCms

    adobe = adobe_rgb_profile()
    to_adobe = ImageCms.buildTransform(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")),
                                       ImageCms.ImageCmsProfile(io.BytesIO(adobe)), "RGB", "RGB")
    ImageCms.applyTransform(Image.fromarray(rgb), to_adobe).save(path, icc_profile=adobe, **kw)
    return path


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tif", ".webp"])
def test_an_image_with_an_embedded_colour_profile_is_read_in_srgb(tmp_path: Path, ext: str) -> None:
    """A cell saved in Adobe RGB (a microscope DSLR's setting) with its profile embedded shows the same colours in
    any viewer, but wbc read its numbers as they are: about 4 levels off on average, flagging cells."""
    from PIL import Image, ImageCms

    rgb = synthetic_cell("neutrophil", 96, seed=0)
    kw = {"quality": 95} if ext == ".jpg" else {"lossless": True} if ext == ".webp" else {}
    Image.fromarray(rgb).save(tmp_path / f"ref{ext}", **kw)
    ref = read_image(tmp_path / f"ref{ext}").astype(int)
    adobe = read_image(save_in_adobe_rgb(rgb, tmp_path / f"adobe{ext}", **kw)).astype(int)
    assert np.abs(adobe - ref).mean() < (2.0 if ext == ".jpg" else 1.0)  # JPEG: two encodings' own losses
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()  # an sRGB profile: nothing to change
    Image.fromarray(rgb).save(tmp_path / f"srgb{ext}", icc_profile=srgb, **kw)
    assert np.array_equal(read_image(tmp_path / f"srgb{ext}"), ref)


@pytest.mark.real_data
def test_an_adobe_rgb_copy_of_a_pbc_cell_gets_the_srgb_original_s_answer_and_flags(real_data: Path,
                                                                                  tmp_path: Path) -> None:
    """Ignoring the profile, the Adobe RGB copies of these two PBC cells were flagged where the originals were not
    (the immature granulocyte "colours unlike the training images", the monocyte below the review threshold)."""
    import wbc

    files = []
    for src in ("ig/IG_110946.jpg", "monocyte/MO_100695.jpg"):
        rgb = read_image(real_data / "pbc" / src)
        stem = Path(src).stem
        _write(tmp_path / f"{stem}_ref.png", rgb[:, :, ::-1])
        files += [tmp_path / f"{stem}_ref.png", save_in_adobe_rgb(rgb, tmp_path / f"{stem}_adobe.png")]
    res = wbc.classify_images(files, workers=1)
    assert not res.errors
    for ref, adobe in zip(res.predictions[::2], res.predictions[1::2], strict=True):
        assert (adobe.label, adobe.review, adobe.ood) == (ref.label, ref.review, ref.ood), (ref, adobe)
        assert abs(adobe.confidence - ref.confidence) < 0.005


def test_a_truncated_file_is_one_line_with_the_decoder_s_reason_and_no_decoder_noise(capfd) -> None:
    """Three truncated files printed six lines of OpenCV, libtiff and libpng errors naming no file before wbc's own
    "not a readable image (OSError)"; a PNG without only its end chunk, which Pillow reads, was refused."""
    from PIL import Image

    rgb = synthetic_cell("neutrophil", 96, seed=0)
    png = cv2.imencode(".png", rgb[:, :, ::-1])[1].tobytes()
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "TIFF")
    for data, name in ((png[: len(png) // 2], "cut.png"), (buf.getvalue()[: len(buf.getvalue()) // 2], "cut.tif")):
        with pytest.raises(ImageReadError, match=rf"^{name}: not a readable image \(image file is truncated"):
            decode_image(data, name)
    assert np.array_equal(decode_image(png[: png.rindex(b"IEND") - 4], "no_end.png"), rgb)
    err = capfd.readouterr().err
    assert "[ERROR" not in err and "[ WARN" not in err and "libpng error" not in err and "Warning" not in err, err


def test_sixteen_bit_alpha_and_float_samples_keep_their_own_scales(tmp_path: Path) -> None:
    bgra = np.zeros((6, 6, 4), np.uint16)
    bgra[..., :3] = 4000  # a 12-bit camera's near-white
    bgra[:3, :, 3] = 65535  # opaque half; the other half transparent -> white
    img = read_image(_write(tmp_path / "a16.png", bgra))
    assert img[:3].max() == img[:3].min() == round(4000 * 255 / 4095) and img[3:].min() == 255
    ramp = np.linspace(0, 4095, 36, dtype=np.float32).reshape(6, 6)
    assert read_image(_write(tmp_path / "f.tif", ramp))[..., 0].max() == 255
    assert read_image(_write(tmp_path / "unit.tif", ramp / 4095))[..., 0].max() == 255


def test_a_float_file_with_one_stray_sample_reads_on_its_own_scale(tmp_path: Path) -> None:
    """One inf, or one overshoot to 1.02, in a 0-1 float file from a processing pipeline made the whole image read
    black, and it was refused as a blank frame or a drawing."""
    cell = synthetic_cell("lymphocyte").astype(np.float32) / 255
    expected = read_image(_write(tmp_path / "clean.tif", cell))
    for name, value in (("inf", np.inf), ("overshoot", 1.02), ("nan", np.nan)):
        stray = cell.copy()
        stray[0, 0, 0] = value
        got = read_image(_write(tmp_path / f"{name}.tif", stray))
        assert np.abs(got[1:].astype(int) - expected[1:]).max() == 0, name


def test_a_float_tiff_with_its_glass_at_one_reads_bright_and_is_classified(tmp_path: Path) -> None:
    """A flat-field corrected float TIFF (image / flat: the glass at about 1.0, noise above and below it) has well
    over 0.1 % of its samples above 1, so its 99.9th percentile (1.02-1.06) was read as 8-bit levels: every pixel 0 or
    1, and `wbc classify` refused the file as "too dark (under-exposed)". Up to 2 it is the 0-1 scale (wbc 0.36.0)."""
    from wbc.classify import read_cell

    rgb = synthetic_cell("neutrophil", 96, seed=0).astype(np.float32)
    flat = rgb / np.percentile(rgb.reshape(-1, 3), 90, axis=0)  # flat-field corrected: the glass at ~1.0
    flat += np.random.default_rng(0).normal(0, 0.005, flat.shape).astype(np.float32)  # camera noise around it
    assert np.percentile(flat, 99.9) > 1.0
    out = read_image(_write(tmp_path / "flat.tif", flat))
    assert np.percentile(out.max(axis=2), 90) > 200  # the glass: white, not 1 of 255
    clipped = read_image(_write(tmp_path / "clipped.tif", np.clip(flat, 0, 1)))
    assert np.abs(out.astype(int) - clipped).max() <= 1  # as the same image clipped at 1.0 reads
    assert read_cell(tmp_path / "flat.tif", 64, reframe=True).shape == (64, 64, 3)  # answered, not refused


def test_bad_files_name_the_file_and_problem(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.jpg: file is empty"):
        read_image(empty)
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    with pytest.raises(ImageReadError, match=r"junk\.png: not a readable image"):
        read_image(junk)
    _ok, enc = cv2.imencode(".jpg", np.full((64, 64, 3), 128, np.uint8))
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(enc.tobytes()[: len(enc) // 2])
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(trunc)
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.png")


def test_reduced_jpeg_decode_never_goes_below_min_size() -> None:
    bgr = np.full((400, 360, 3), 100, np.uint8)
    bgr[..., 2] = 220  # red in BGR
    _ok, enc = cv2.imencode(".jpg", bgr)
    img = decode_image(enc.tobytes(), "x.jpg", min_size=160)
    assert img.shape[:2] == (200, 180)  # half-scale decode, still >= 160
    assert img.flags.c_contiguous and img[..., 0].mean() > 200 and img[..., 2].mean() < 120  # RGB order
    full = decode_image(enc.tobytes(), "x.jpg")
    np.testing.assert_allclose(cv2.resize(full, (180, 200), interpolation=cv2.INTER_AREA).mean((0, 1)),
                               img.mean((0, 1)), atol=2)  # the same colours as the full-size decode
    assert decode_image(enc.tobytes(), "x.jpg", min_size=300).shape[:2] == (400, 360)


def _tagged(rgb: np.ndarray, fmt: str, orientation: int) -> bytes:
    """``rgb`` saved as ``fmt`` with its EXIF orientation tag set (a phone's photo turned in the file)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = orientation
    kwargs = {"tiffinfo": {0x0112: orientation}} if fmt == "TIFF" else {"exif": exif}
    Image.fromarray(rgb).save(buf, fmt, quality=95, **kwargs) if fmt == "JPEG" else Image.fromarray(rgb).save(
        buf, fmt, **kwargs)
    return buf.getvalue()


def test_a_jpeg_is_turned_the_same_way_read_reduced_or_whole() -> None:
    """A JPEG whose EXIF says "rotate" (a phone photo) is turned the same way whether it is decoded at a reduced size
    or whole (OpenCV's reduced decoding applied the rotation and its whole decoding did not, so the same file came out
    turned by its size, and a region cut by coordinates of one decoding from the other was the wrong one); since wbc
    0.31.0 both turn it as viewers show it."""
    rgb = np.zeros((400, 600, 3), np.uint8)
    rgb[:50, :100] = 255  # a mark in the top-left corner of the stored pixels
    data = _tagged(rgb, "JPEG", 6)  # orientation: rotate 90 degrees clockwise to display
    whole, reduced = decode_image(data, "p.jpg"), decode_image(data, "p.jpg", min_size=100)
    assert whole.shape[:2] == (600, 400) and reduced.shape[:2] == (150, 100)  # 1/4, the same way up
    assert whole[:100, -50:].mean() > 200 and reduced[:20, -10:].mean() > 200  # the mark top right, as shown
    assert reduced[-10:, :20].mean() < 50


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "WEBP"])
def test_an_image_is_read_in_the_orientation_every_viewer_shows(tmp_path: Path, fmt: str) -> None:
    """A file whose EXIF orientation says how to show it (a phone's photo through an eyepiece) is read turned as
    every viewer and browser shows it (Pillow's ``exif_transpose``), from a path and from bytes alike: its boxes
    were in the stored pixels' frame, turned 90 degrees from the photo as shown (before wbc 0.31.0). OpenCV's TIFF
    decoder turns a TIFF itself: it must not be turned twice."""
    import io

    from PIL import Image, ImageOps

    yy, xx = np.mgrid[:120, :160]
    rgb = np.stack([xx * 255 // 160, yy * 255 // 120, np.full_like(xx, 128)], axis=-1).astype(np.uint8)
    for orientation in range(1, 9):
        data = _tagged(rgb, fmt, orientation)
        shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")).astype(int)
        path = tmp_path / f"o{orientation}.{fmt.lower()}"
        path.write_bytes(data)
        for got in (read_image(path), decode_image(data, "x")):
            assert got.shape == shown.shape, (orientation, got.shape)
            assert np.abs(got.astype(int) - shown).mean() < 1.0, orientation


def test_exif_orientation_is_read_from_a_jpeg_header_by_hand() -> None:
    """The orientation of a JPEG is read from its EXIF block (big- or little-endian, behind other APP segments);
    a file without one, or with a malformed one, is shown as stored."""
    from wbc.io import exif_orientation

    rgb = np.full((16, 24, 3), 200, np.uint8)
    assert [exif_orientation(_tagged(rgb, "JPEG", o)) for o in range(1, 9)] == list(range(1, 9))
    ok, plain = cv2.imencode(".jpg", rgb)
    assert ok and exif_orientation(plain.tobytes()) == 1
    tiff = b"MM\x00*\x00\x00\x00\x08\x00\x01" + b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x08\x00\x00"  # big-endian, 8
    app1 = b"Exif\x00\x00" + tiff
    jpg = plain.tobytes()
    jpg = jpg[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + jpg[2:]
    assert exif_orientation(jpg) == 8 and decode_image(jpg, "x.jpg").shape[:2] == (24, 16)
    broken = jpg[:2] + b"\xff\xe1\x00\x0cExif\x00\x00MM\x00*" + jpg[2:]  # the directory's offset cut off
    assert exif_orientation(broken) == 1


def test_iter_image_paths_sorted_recursive_and_missing(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ["b.png", "a.jpg", "sub/c.tiff", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in iter_image_paths([tmp_path])] == ["a.jpg", "b.png", "c.tiff"]
    with pytest.raises(ImageReadError, match="no such file or folder"):
        list(iter_image_paths([tmp_path / "nope"]))


def test_hidden_folders_are_left_out_and_linked_folders_followed_once(tmp_path: Path) -> None:
    """Thumbnails in a hidden folder would count a lab's cells twice; a linked folder of today's scans is part of
    the folder; a link back up the tree must not loop."""
    img = cv2.imencode(".png", synthetic_cell("neutrophil"))[1].tobytes()
    scans = tmp_path / "scanner" / "today"
    scans.mkdir(parents=True)
    (scans / "c.png").write_bytes(img)
    lab = tmp_path / "lab"
    for name in ("a.png", ".thumbnails/a.png", ".ipynb_checkpoints/b.png", "sub/b.png"):
        (lab / name).parent.mkdir(parents=True, exist_ok=True)
        (lab / name).write_bytes(img)
    (lab / "today").symlink_to(scans)
    (lab / "sub" / "loop").symlink_to(lab)
    found = [p.relative_to(lab).as_posix() for p in iter_image_paths([lab])]
    assert found == ["a.png", "sub/b.png", "today/c.png"]


def test_jfif_jpe_and_jif_jpegs_in_a_folder_are_read(tmp_path: Path) -> None:
    """Chrome and Edge on Windows save photos as .jfif: a folder's were left out of the run without a word."""
    jpg = cv2.imencode(".jpg", synthetic_cell("neutrophil", 64, seed=0)[:, :, ::-1])[1].tobytes()
    for name in ("a.jpg", "b.jfif", "c.JPE", "d.jif"):
        (tmp_path / name).write_bytes(jpg)
    assert [p.name for p in iter_image_paths([tmp_path])] == ["a.jpg", "b.jfif", "c.JPE", "d.jif"]
    assert read_image(tmp_path / "b.jfif").shape == (64, 64, 3)


def test_a_folder_it_may_not_list_and_links_to_missing_images_are_named(tmp_path: Path, monkeypatch) -> None:
    """A subfolder this user may not list (another user's day on a share) and a link named as an image whose file
    is gone were dropped from a folder run in silence, and an unlistable folder was said to "hold no files"."""
    from wbc.io import no_images_message

    lab = tmp_path / "lab"
    for day in ("monday", "tuesday"):
        (lab / day).mkdir(parents=True)
        (lab / day / "cell.jpg").write_bytes(b"x")
    (lab / "e.png").symlink_to(tmp_path / "gone.png")
    (lab / "notes.txt").symlink_to(tmp_path / "gone.txt")  # no image: nothing to say
    scandir = os.scandir

    def refuse_tuesday(path: str | os.PathLike[str] = ".") -> object:  # what a mode-000 folder gives a non-root user
        if os.fspath(path).endswith("tuesday"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse_tuesday)
    assert [p.relative_to(lab).as_posix() for p in iter_image_paths([lab])] == ["monday/cell.jpg"]
    assert no_images_message([lab / "tuesday"]) == (f"no image files found in {lab / 'tuesday'}: cannot list the "
                                                    "folder (Permission denied)")
    from wbc.io import left_out_under

    assert left_out_under([lab]) == [f"{lab / 'e.png'}: link to a missing file ({tmp_path / 'gone.png'})",
                                     f"{lab / 'tuesday'}: cannot list the folder (Permission denied)"]


def test_atomic_csv_leaves_no_temp_files(tmp_path: Path) -> None:
    atomic_write_csv(tmp_path / "out.csv", ["a", "b"], [[1, 2]])
    assert (tmp_path / "out.csv").read_text() == "a,b\n1,2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


_WRITE_OVER_A_FILE_SIZE_LIMIT = r"""
import resource, signal, sys
from wbc.io import atomic_write_bytes
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # no file may grow past 4 kB
try:
    atomic_write_bytes(sys.argv[1], b"n" * 100_000)
except OSError as exc:
    print("refused:", exc.strerror)
"""


def test_a_write_that_fails_part_way_leaves_the_old_file_whole(tmp_path: Path) -> None:
    """Outputs are written atomically: a write that fails part-way (here a real file-size limit in a child process,
    as a full disk would; no mock) leaves the previous file as it was and no temporary file beside it. Written in
    place, it would be cut short at 4 kB of the new contents (or removed, by a clean-up)."""
    out = tmp_path / "cells.csv"
    out.write_bytes(b"old,contents\n")
    r = subprocess.run([sys.executable, "-c", _WRITE_OVER_A_FILE_SIZE_LIMIT, str(out)], capture_output=True, text=True,
                       timeout=120)
    assert "refused:" in r.stdout, r.stdout + r.stderr
    assert out.read_bytes() == b"old,contents\n"
    assert [p.name for p in tmp_path.iterdir()] == ["cells.csv"]


def test_an_output_through_a_symbolic_link_updates_the_file_it_points_to(tmp_path: Path) -> None:
    """A lab's ``latest.csv -> shared/today.csv`` became a local file and the shared file kept its old contents (the
    atomic rename replaced the link); a link to a file not there yet creates it."""
    from wbc.io import atomic_write_text, check_output_file

    (tmp_path / "shared").mkdir()
    real = tmp_path / "shared" / "today.csv"
    real.write_text("old")
    link = tmp_path / "latest.csv"
    link.symlink_to(real)
    assert check_output_file(link) == link
    atomic_write_text(link, "new\n")
    assert link.is_symlink() and real.read_text() == "new\n"
    ahead = tmp_path / "tomorrow.csv"
    ahead.symlink_to(tmp_path / "shared" / "later" / "tomorrow.csv")
    atomic_write_text(ahead, "x\n")
    assert ahead.is_symlink() and ahead.read_text() == "x\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["later", "latest.csv", "shared", "today.csv",
                                                           "tomorrow.csv", "tomorrow.csv"]


def test_an_output_to_a_fifo_or_stdout_through_a_link_is_streamed_not_replaced(tmp_path: Path) -> None:
    """``-o /dev/stdout`` (a link to the process's stdout) as root replaced the container's ``/dev/stdout`` link with a
    file and printed nothing. Here a link in a temporary folder points to a FIFO, as ``/dev/stdout`` to a pipe: the
    write goes into it, and the link and the FIFO stay as they are."""
    import threading

    from wbc.io import atomic_write_text, check_output_file

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "stdout"
    link.symlink_to(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    try:
        assert check_output_file(link) == link  # no probe file beside a stream
        atomic_write_text(link, "a,b\n")
        reader.join(10)
    finally:
        if reader.is_alive():  # the write went elsewhere: let the reader see the end of the FIFO
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            reader.join(10)
    assert got == ["a,b\n"] and link.is_symlink() and fifo.is_fifo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe", "stdout"]


def test_an_output_through_a_link_to_stdout_or_stderr_writes_into_the_shell_s_file_never_over_it(
    tmp_path: Path,
) -> None:
    """``wbc classify ... -o /dev/stdout >> all.csv`` renamed a new file over all.csv (the link resolves to the shell's
    file), so its earlier rows were lost; ``-o /dev/stderr 2>>run.log`` lost the log, and the lines printed after went
    to the unlinked file. A path through a process's open files is a stream, written where the shell's descriptor
    points. Links in tmp_path stand in for /dev/stdout and /dev/stderr (never the real ones in a test run as root), in a
    child process whose descriptors are the shell's redirections."""
    (tmp_path / "stdout").symlink_to("/proc/self/fd/1")
    (tmp_path / "stderr").symlink_to("/proc/self/fd/2")
    (tmp_path / "out").symlink_to("stdout")  # a chain of links, relative

    def child(code: str, out: Path, mode: str, err: Path | None = None) -> None:
        with open(out, mode) as fo, open(err or os.devnull, "a") as fe:  # `>> all.csv` / `> all.csv`, `2>> run.log`
            subprocess.run([sys.executable, "-c", "import sys; from wbc.io import atomic_write_text as w\n" + code],
                           stdout=fo, stderr=fe, check=True, env={**os.environ})

    all_csv = tmp_path / "all.csv"
    all_csv.write_text("earlier,row\n")
    for link in ("stdout", "out"):
        child(f"w({str(tmp_path / link)!r}, 'new,row\\n')", all_csv, "a")
    assert all_csv.read_text() == "earlier,row\nnew,row\nnew,row\n"
    # `> all.csv`: lines printed before and after the CSV keep their order, none written over
    child(f"print('before', flush=True); w({str(tmp_path / 'stdout')!r}, 'a,b\\n'); print('after')", all_csv, "w")
    assert all_csv.read_text() == "before\na,b\nafter\n"
    log = tmp_path / "run.log"
    log.write_text("earlier line\n")
    child(f"print('x', file=sys.stderr); w({str(tmp_path / 'stderr')!r}, 'a,b\\n'); print('done', file=sys.stderr)",
          tmp_path / "o.txt", "w", err=log)
    assert log.read_text() == "earlier line\nx\na,b\ndone\n"
    assert all((tmp_path / n).is_symlink() for n in ("stdout", "stderr", "out"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.csv", "o.txt", "out", "run.log", "stderr", "stdout"]


def test_a_gif_in_a_folder_is_read_and_a_folder_of_other_files_says_what_it_holds(tmp_path: Path) -> None:
    """A folder of GIFs was skipped in silence and reported as holding no image files; a folder of another format
    (JPEG XL) said only that, as if empty. JPEG 2000 and AVIF files are read (wbc 0.27.0; they were left out)."""
    from PIL import Image

    from wbc.errors import WbcError
    from wbc.io import no_images_message

    cell = synthetic_cell("neutrophil", 64, 0)
    Image.fromarray(cell).convert("P").save(tmp_path / "cell.gif")
    assert list(iter_image_paths([tmp_path])) == [tmp_path / "cell.gif"]
    assert read_image(tmp_path / "cell.gif").shape == (64, 64, 3)
    Image.fromarray(cell).save(tmp_path / "cell.jp2")  # a slide scanner's or a PACS export
    Image.fromarray(cell).save(tmp_path / "cell.avif", quality=90)
    assert [p.name for p in iter_image_paths([tmp_path])] == ["cell.avif", "cell.gif", "cell.jp2"]
    for name in ("cell.jp2", "cell.avif"):
        assert np.abs(read_image(tmp_path / name).astype(int) - cell).mean() < 4, name

    other = tmp_path / "other"
    other.mkdir()
    for name in ("a.jxl", "b.jxl", "notes.txt"):
        (other / name).write_bytes(b"x")
    msg = no_images_message([other])
    assert msg.startswith(f"no image files in {other}: 3 other files (.jxl 2, .txt 1)")
    assert "\n" not in msg
    (tmp_path / "empty").mkdir()
    assert no_images_message([tmp_path / "empty"]).endswith("it holds no files")

    from wbc.batch import plan_jobs

    with pytest.raises(WbcError, match=r"\.jxl 2"):
        plan_jobs([other])


def test_a_jpeg_with_data_after_its_end_is_read_and_a_cut_one_refused_even_with_a_thumbnail() -> None:
    """A phone's motion photo (a video after the picture's end) or a camera's padding is a complete JPEG; a JPEG cut
    short is refused, also when the EXIF segment holds a thumbnail with an end-of-image marker of its own."""
    from wbc.io import jpeg_complete

    cell = synthetic_cell("monocyte", 160)
    main = cv2.imencode(".jpg", cell[:, :, ::-1])[1].tobytes()
    thumb = cv2.imencode(".jpg", cv2.resize(cell, (40, 40))[:, :, ::-1])[1].tobytes()
    payload = b"Exif\x00\x00" + thumb
    with_thumb = main[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + main[2:]
    motion = main + b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40
    scan = main.find(b"\xff\xda")  # fill bytes (0xFF) before markers, as the standard allows, and a trailer
    filled = main[:2] + b"\xff" + main[2:scan] + b"\xff\xff" + main[scan:] + bytes(500)
    for data in (main, with_thumb, motion, main + bytes(500), filled):
        assert jpeg_complete(data)
        assert np.abs(decode_image(data, "x.jpg").astype(int) - decode_image(main, "y.jpg")).mean() < 1
    cut_thumb = with_thumb[: len(with_thumb) - len(main) // 2]
    assert b"\xff\xd9" in cut_thumb  # the thumbnail's end: a search for any end marker would take it as the picture's
    for data in (main[: len(main) // 2], cut_thumb):
        assert not jpeg_complete(data)
        with pytest.raises(ImageReadError, match="truncated JPEG"):
            decode_image(data, "cut.jpg")


def test_files_under_stays_below_a_link_to_an_ancestor_and_names_files_by_their_real_path(tmp_path: Path) -> None:
    """A link to the input's parent (`lab/up -> ..`) was followed, counting the other slides beside the folder; a
    file reachable through a real folder and a link to it was named by whichever the file system listed first
    (wbc 0.28.0), so its JSON name, report and resume key changed when the folder was copied."""
    from wbc.io import files_under

    (tmp_path / "lab" / "a").mkdir(parents=True)
    (tmp_path / "lab" / "a" / "1.jpg").write_bytes(b"x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "3.jpg").write_bytes(b"z")
    (tmp_path / "lab" / "up").symlink_to(tmp_path)
    (tmp_path / "lab" / "0twin").symlink_to(tmp_path / "lab" / "a")  # sorted before the real folder
    (tmp_path / "lab" / "a" / "deeper").mkdir()
    (tmp_path / "lab" / "a" / "deeper" / "back").symlink_to(tmp_path / "lab" / "a")  # its own ancestor, inside
    assert [p.relative_to(tmp_path).as_posix() for p in files_under(tmp_path / "lab")] == ["lab/a/1.jpg"]
    # a link to a folder elsewhere (today's scans) is still followed, also through a link inside a linked folder
    (tmp_path / "scans" / "today").mkdir(parents=True)
    (tmp_path / "scans" / "today" / "4.jpg").write_bytes(b"w")
    (tmp_path / "scans" / "today" / "up").symlink_to(tmp_path / "scans")  # an ancestor of the linked folder
    (tmp_path / "lab" / "today").symlink_to(tmp_path / "scans" / "today")
    assert [p.relative_to(tmp_path).as_posix() for p in files_under(tmp_path / "lab")] == ["lab/a/1.jpg",
                                                                                         "lab/today/4.jpg"]


def radiance_bomb(width: int, height: int, lines: int | None = None, header: bytes = b"") -> bytes:
    """A Radiance RGBE (.hdr) file of ``width`` x ``height`` whose every line is one run-length coded run per
    component: ~16 pixels a byte (float32 RGB, 12 bytes a pixel, once decoded). ``lines``: how many lines to write
    (fewer: a file cut short); ``header``: extra header lines."""
    head = b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n" + header + f"\n-Y {height} +X {width}\n".encode()
    runs = b"".join(bytes([128 + min(127, width - i), 128]) for i in range(0, width, 127))
    return head + (bytes([2, 2, width >> 8, width & 255]) + runs * 4) * (height if lines is None else lines)


def test_a_radiance_file_s_size_is_read_from_its_header_and_a_bomb_never_decoded(monkeypatch) -> None:
    """Pillow cannot read Radiance .hdr, so its size was unknown and OpenCV decoded a 3 MB file of 50 megapixels
    (600 MB as float32) before the pixel limit was checked (wbc 0.28.0)."""
    _ok, enc = cv2.imencode(".hdr", np.ones((30, 40, 3), np.float32))
    assert image_size(enc.tobytes(), "small.hdr") == (30, 40) and decode_image(enc.tobytes()).shape == (30, 40, 3)
    bomb = radiance_bomb(20000, 2500)
    assert len(bomb) < 4 * 2**20 and image_size(bomb, "b.hdr") == (2500, 20000)

    def decoded(*_a: object) -> None:
        raise AssertionError("the bomb was decoded")

    monkeypatch.setattr(wbc.io, "_decode", decoded)
    with pytest.raises(ImageTooLargeError, match=r"b\.hdr: 20000x2500 pixels is over the limit of 40,000,000"):
        decode_image(bomb, "b.hdr", max_pixels=40_000_000)
    # OpenCV ends the header at a blank 127-byte piece of a longer line: a decoy after it never hides the real size
    hidden = radiance_bomb(20000, 2500, lines=1, header=b"#" + b"x" * 126 + b"\n") + b"\n\n-Y 8 +X 8\n"
    assert image_size(hidden, "h.hdr") == (2500, 20000)
    with pytest.raises(ImageReadError, match=r"n\.hdr: Radiance image without a resolution line"):
        image_size(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n", "n.hdr")


def test_opencv_refuses_an_image_past_max_pixels_whatever_its_format() -> None:
    """The second layer: ``import wbc`` sets OpenCV's own header check to MAX_PIXELS (its default, 2**30, let a
    format whose size wbc does not read decode to 12 GB)."""
    code = ("import os, sys, numpy as np, wbc, cv2\n"
            "print(os.environ.get('OPENCV_IO_MAX_IMAGE_PIXELS') or sys.exit('OPENCV_IO_MAX_IMAGE_PIXELS not set'))\n"
            "data = np.frombuffer(sys.stdin.buffer.read(), np.uint8)\n"
            "try:\n    cv2.imdecode(data, cv2.IMREAD_UNCHANGED)\nexcept cv2.error as exc:\n"
            "    print('refused' if 'CV_IO_MAX_IMAGE_PIXELS' in str(exc) else exc)\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    out = subprocess.run([sys.executable, "-c", code], input=radiance_bomb(20000, MAX_PIXELS // 20000 + 1, lines=1),
                         capture_output=True, env=env)
    assert out.stdout.decode().split() == [str(MAX_PIXELS), "refused"], out.stderr.decode()[-300:]


@pytest.mark.parametrize("order, variable, refused", [
    ("import wbc, cv2", None, False), ("import cv2, wbc", None, True), ("import cv2, wbc", "300000000", False)])
def test_a_format_wbc_cannot_size_is_refused_when_opencv_s_limit_came_too_late(order: str, variable: str | None,
                                                                               refused: bool) -> None:
    """OpenCV reads OPENCV_IO_MAX_IMAGE_PIXELS once, on import: after ``import cv2; import wbc`` its default, 2**30
    pixels, stayed in force and a PFM or PAM file (sized by neither wbc nor Pillow) was decoded whatever its
    size. It is now refused, in one line saying why, unless the variable was set before cv2 was imported."""
    code = (f"{order}\nimport sys\nfrom wbc.errors import ImageReadError\nfrom wbc.io import decode_image\n"
            "try:\n    print(decode_image(sys.stdin.buffer.read(), 'f.pfm').shape)\n"
            "except ImageReadError as exc:\n    print(exc)\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    if variable is not None:
        env["OPENCV_IO_MAX_IMAGE_PIXELS"] = variable
    pfm = cv2.imencode(".pfm", np.full((30, 40, 3), 0.5, np.float32))[1].tobytes()
    out = subprocess.run([sys.executable, "-c", code], input=pfm, capture_output=True, env=env)
    said = out.stdout.decode().strip()
    if refused:
        assert said.startswith("f.pfm: its size cannot be read before decoding") and "import wbc first" in said, said
    else:
        assert said == "(30, 40, 3)", said + out.stderr.decode()[-300:]


@pytest.mark.parametrize("name, data, said", [
    ("t.jpg", b"\xff\xd8\xff garbage", "t.jpg: truncated JPEG"),
    ("notes.txt", b"just some notes\n", "notes.txt: not a"),
    ("f.pam", b"P7\nWIDTH 4\nHEIGHT 4\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n" + bytes(48),
     "f.pam: its size cannot be read before decoding")])
def test_cv2_first_keeps_the_decoder_s_message_for_a_broken_file(name: str, data: bytes, said: str) -> None:
    """After ``import cv2; import wbc`` every file whose size nobody read was refused as "cv2 imported before wbc",
    a truncated JPEG or a text file too, so the real fault was never said. Only formats OpenCV alone decodes
    (PFM, PAM, OpenEXR, JPEG XL) are refused now; a broken file gets the decoder's own message."""
    code = ("import cv2, wbc\nimport sys\nfrom wbc.errors import ImageReadError\nfrom wbc.io import decode_image\n"
            f"try:\n    print(decode_image(sys.stdin.buffer.read(), {name!r}).shape)\n"
            "except ImageReadError as exc:\n    print(exc)\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    out = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True, env=env)
    got = out.stdout.decode().strip()
    assert got.startswith(said), got + out.stderr.decode()[-300:]
    assert ("import wbc first" in got) == name.endswith(".pam"), got


def test_a_single_cell_photo_turned_by_its_exif_is_classified_as_shown() -> None:
    """`wbc classify` (:func:`wbc.classify.decode_cell_views`, reduced decoding and re-framing from the whole
    decoding) sees a phone's photo tagged "turn 90 degrees to show" as the same photo saved already turned: the reduced
    and whole decodings are turned alike, so a region found on one is cut from the other in the same place."""
    from wbc.classify import decode_cell_views
    from wbc.reframe import DEFAULT_STATS

    rng = np.random.default_rng(0)
    shown = np.clip(rng.normal(0, 3, (900, 1600, 3)) + np.array([235, 225, 228]), 0, 255).astype(np.uint8)
    cv2.circle(shown, (1100, 300), 110, (220, 180, 200), -1)  # the cell, off the centre of a wide frame
    cv2.circle(shown, (1080, 290), 60, (90, 40, 140), -1)  # its nucleus
    cv2.circle(shown, (1150, 250), 20, (60, 20, 110), -1)  # a lobe: the cell looks different turned
    stored = np.ascontiguousarray(np.rot90(shown, 1))  # the camera's pixels; the tag says turn 90 degrees clockwise
    assert np.array_equal(np.rot90(stored, -1), shown)
    ok, plain = cv2.imencode(".jpg", cv2.cvtColor(shown, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    a = decode_cell_views(plain.tobytes(), "shown.jpg", 160, DEFAULT_STATS)
    b = decode_cell_views(_tagged(stored, "JPEG", 6), "tagged.jpg", 160, DEFAULT_STATS)
    for x, y in zip(a, b, strict=True):
        assert (x is None) == (y is None)
        if x is not None:
            assert np.abs(x.astype(int) - y.astype(int)).mean() < 2  # 6.5 when read as stored


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_bigtiff_of_separate_colour_planes_reads_as_its_chunky_twin(orientation: int) -> None:
    """The planar check read classic TIFF headers only, so a 16-bit BigTIFF of separate planes (tifffile writes
    BigTIFF for large images or on request, OME-TIFF writers too) was still decoded by OpenCV as three grey copies
    over noise (a PBC neutrophil answered "eosinophil"); turned by its orientation as OpenCV turns its chunky twin."""
    tifffile = pytest.importorskip("tifffile")
    rgb = synthetic_cell("neutrophil", 96, seed=0)[:, :80].astype(np.uint16) * 257
    planar, chunky = io.BytesIO(), io.BytesIO()
    kw: dict = {"photometric": "rgb", "bigtiff": True, "extratags": [(274, 3, 1, orientation, False)]}
    tifffile.imwrite(planar, np.moveaxis(rgb, -1, 0), planarconfig="separate", **kw)
    tifffile.imwrite(chunky, rgb, **kw)
    assert planar.getvalue()[:4] == b"II+\x00"
    assert tifffile.TiffFile(io.BytesIO(planar.getvalue())).pages[0].planarconfig == 2
    want = np.rot90(rgb // 257, -1) if orientation == 6 else rgb // 257
    assert np.array_equal(decode_image(chunky.getvalue(), "chunky.tif"), want)
    assert np.array_equal(decode_image(planar.getvalue(), "planar.tif"), want)


def test_a_bigtiff_s_pages_and_colour_profile_are_read_as_a_classic_tiff_s() -> None:
    """Only classic TIFF headers were recognised: a BigTIFF of three fields counted as one (no "only the first was
    analysed" warning) and its embedded colour profile was ignored."""
    tifffile = pytest.importorskip("tifffile")
    pages, tagged = io.BytesIO(), io.BytesIO()
    with tifffile.TiffWriter(pages, bigtiff=True) as tif:
        for _ in range(3):
            tif.write(np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    tifffile.imwrite(tagged, np.zeros((8, 8, 3), np.uint8), photometric="rgb", bigtiff=True,
                     iccprofile=adobe_rgb_profile())
    assert wbc.io.tiff_fields(pages.getvalue()) == 3
    assert wbc.io.embedded_icc(tagged.getvalue()) == adobe_rgb_profile()


@pytest.mark.parametrize("compression", [None, "tiff_lzw"])
def test_a_multi_page_tiff_cut_short_is_counted_as_far_as_it_reads_never_an_error(compression: str | None) -> None:
    """Pillow's page count raised TypeError ("Missing dimensions") for a three-page TIFF cut after its first page in
    most places (101 of 201 cuts uncompressed, 199 of 201 with LZW), and `/analyze` answered a field it had analysed
    "analysis failed (TypeError)" (wbc 0.32.0). Its pages are counted up to the damaged one, which counts too."""
    from PIL import Image

    page = Image.fromarray(synthetic_cell("neutrophil", 96, seed=0))
    buf = io.BytesIO()
    page.save(buf, "TIFF", save_all=True, append_images=[page] * 2,
              **({"compression": compression} if compression else {}))
    data = buf.getvalue()
    assert wbc.io.tiff_fields(data) == 3
    counts = [wbc.io.tiff_fields(data[:cut]) for cut in range(8, len(data), max(1, len(data) // 400))]
    assert set(counts) <= {1, 2, 3} and 2 in counts, sorted(set(counts))
    half = data[: len(data) // 2]
    decode_image(half, "half.tif")  # its first page is whole
    assert wbc.io.tiff_fields(half) >= 2  # and the file says more follow: "only the first was analysed"


def png_with_profile(profile: bytes) -> bytes:
    """A 16x16 PNG whose iCCP chunk holds ``profile``, zlib-compressed (16 MB of zeros compress to 16 KB)."""
    import struct
    import zlib

    png = cv2.imencode(".png", np.full((16, 16, 3), 200, np.uint8))[1].tobytes()
    body = b"icc\x00\x00" + zlib.compress(profile, 9)
    chunk = struct.pack(">I", len(body)) + b"iCCP" + body + struct.pack(">I", zlib.crc32(b"iCCP" + body))
    return png[:33] + chunk + png[33:]  # after IHDR


def test_embedded_colour_profiles_are_not_kept_in_memory_and_a_huge_one_is_refused() -> None:
    """The transforms' cache was keyed by the profiles' bytes: a 16 KB PNG whose profile inflates to 16 MB left the
    16 MB held for the process's life, even though the upload was refused; 32 of them, 500 MB of a server."""
    import gc
    import tracemalloc

    unreadable = [png_with_profile(i.to_bytes(4, "big") + bytes(3 << 20)) for i in range(8)]  # 3 MB each, under
    huge = png_with_profile(bytes(16 << 20))
    assert max(len(f) for f in [*unreadable, huge]) < 20_000
    decode_image(png_with_profile(adobe_rgb_profile()), "warm.png")  # Pillow's modules imported before measuring
    gc.collect()
    tracemalloc.start()
    try:
        for data in unreadable:
            assert decode_image(data, "cell.png").shape == (16, 16, 3)  # an unreadable profile is ignored
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
        assert held < 1 << 20, f"{held / 2**20:.1f} MB held after decoding 8 files with 3 MB profiles"
        tracemalloc.reset_peak()
        with pytest.raises(ImageReadError, match=r"^huge\.png: its embedded colour profile is over 4 MB"):
            decode_image(huge, "huge.png")
        gc.collect()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 1 << 20 and peak < 12 << 20, f"{held / 2**20:.1f} MB held, {peak / 2**20:.1f} MB at the peak"
    adobe = adobe_rgb_profile()  # still converted, and built once
    built = len(wbc.io._TRANSFORMS)
    for _ in range(3):
        decode_image(png_with_profile(adobe), "adobe.png")
    assert len(wbc.io._TRANSFORMS) <= built + 1 and all(len(k) == 32 for k in wbc.io._TRANSFORMS)


def damaged_tiff() -> bytes:
    """A TIFF OpenCV reads whose ImageDescription points past the file's end: Pillow warns "Truncated File Read",
    naming no file, whenever it opens it."""
    import struct

    tifffile = pytest.importorskip("tifffile")
    buf = io.BytesIO()
    tifffile.imwrite(buf, synthetic_cell("neutrophil", 64, seed=0), photometric="rgb", description="x" * 200)
    data = bytearray(buf.getvalue())
    first = struct.unpack("<I", data[4:8])[0] + 2
    for e in range(first, first + 12 * struct.unpack("<H", data[first - 2 : first])[0], 12):
        if struct.unpack("<H", data[e : e + 2])[0] == 270:
            data[e + 8 : e + 12] = struct.pack("<I", len(data) - 50)
    return bytes(data)


@pytest.mark.filterwarnings("ignore:Truncated File Read")  # pytest puts back the filters import added before each test
def test_reading_images_in_threads_leaves_the_program_s_warning_filters_as_they_were(monkeypatch, tmp_path) -> None:
    """Each reader wrapped Pillow in ``warnings.catch_warnings()`` + ``simplefilter("ignore")``, which saves and
    restores the process-wide filter list: readers in several threads put back one another's lists, and after
    ``classify_images(workers=4)`` on TIFFs an "ignore every warning" filter could stay, swallowing the program's own
    warnings. Pillow's open is slowed here so that the threads' reads overlap, as on a loaded machine."""
    import threading
    import time
    import warnings

    from PIL import Image

    import wbc
    from tiny_models import mean_colour_model
    from wbc.labels import CLASSES

    model = wbc.load_model(mean_colour_model(tmp_path / "tiny.onnx", 32, np.eye(len(CLASSES), 3), "tiny-colour"))
    files = []
    for i in range(12):
        files.append(tmp_path / f"cell_{i}.tif")
        Image.fromarray(synthetic_cell("neutrophil", 64, seed=i)).save(files[-1])
    (tmp_path / "damaged.tif").write_bytes(damaged_tiff())
    real_open = Image.open

    def slow_open(*args: object, **kwargs: object) -> Image.Image:
        time.sleep(0.005)  # a thread switch inside each reader's Pillow calls
        return real_open(*args, **kwargs)  # type: ignore[arg-type]

    wbc.classify_images(files[:1], model, workers=1)  # the modules it imports, some adding filters of their own
    monkeypatch.setattr(Image, "open", slow_open)
    before = list(warnings.filters)
    result = wbc.classify_images([*files, tmp_path / "damaged.tif"], model, workers=4)
    assert len(result.predictions) == 13 and not result.errors
    threads = [threading.Thread(target=lambda: [wbc.io.tiff_fields(damaged_tiff()), wbc.io.embedded_icc(
        damaged_tiff()), wbc.io.exif_orientation(damaged_tiff())]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert warnings.filters == before


def test_pillow_s_warnings_about_a_damaged_file_are_not_shown_and_the_program_s_own_are(tmp_path: Path) -> None:
    """Pillow's "Truncated File Read" (and bomb) warnings name no file: wbc's own message does, so they are not
    shown, through filters added once at import (a fresh interpreter: pytest resets filters around each test); the
    program's own warnings, and Pillow's others, still are."""
    (tmp_path / "damaged.tif").write_bytes(damaged_tiff())
    code = ("import sys, warnings, PIL.Image; import wbc.io; PIL.Image.MAX_IMAGE_PIXELS = 3000; "
            "data = open(sys.argv[1], 'rb').read(); "
            "print(wbc.io.decode_image(data, 'damaged.tif').shape, wbc.io.tiff_fields(data), "
            "wbc.io.exif_orientation(data), wbc.io.embedded_icc(data), wbc.io.image_size(data)); "
            "warnings.warn('the program s own warning'); warnings.warn('XMP data cannot be read', UserWarning)")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "damaged.tif")], capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "default"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "(64, 64, 3) 1 1 None None", run.stdout
    assert "Truncated File Read" not in run.stderr and "decompression bomb" not in run.stderr, run.stderr
    assert "the program s own warning" in run.stderr and "XMP data cannot be read" in run.stderr, run.stderr


def test_importing_wbc_leaves_opencv_s_log_level_alone_and_decoding_puts_it_back() -> None:
    """Importing wbc.io set OpenCV's process-wide log level to silent for good: a program using the wbc API lost
    OpenCV's own messages, such as `cv2.imread` of a missing file. It is silent only while wbc decodes, in any thread,
    and put back after (a fresh interpreter: OpenCV's level is the process's)."""
    code = """if True:
        import threading, cv2
        levels = [cv2.utils.logging.getLogLevel()]
        import wbc, wbc.io
        levels.append(cv2.utils.logging.getLogLevel())
        import io, numpy as np
        from PIL import Image
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), np.uint8)).save(buf, "TIFF")
        whole, cut = buf.getvalue(), buf.getvalue()[:14000]  # OpenCV's TIFF decoder logs 4 lines about the cut one
        messages = []
        def read(data, name):
            try:
                wbc.io.decode_image(data, name)
            except wbc.io.ImageReadError as exc:
                messages.append(str(exc))
        threads = [threading.Thread(target=read, args=(whole if i % 2 else cut, f"f{i}.tif"))
                   for i in range(8)]
        for t in threads: t.start()
        for t in threads: t.join()
        levels.append(cv2.utils.logging.getLogLevel())
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        read(cut, "again.tif")
        levels.append(cv2.utils.logging.getLogLevel())
        for m in messages: print(m)
        print(*levels)
    """
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    lines = run.stdout.splitlines()
    assert lines[-1] == "3 3 3 2", run.stdout  # warning before and after import and decoding; the program's own after
    assert len(lines) == 6 and all(": not a readable image" in m for m in lines[:5]), run.stdout
    assert "[ WARN" not in run.stderr and "[ERROR" not in run.stderr, run.stderr
