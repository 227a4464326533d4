"""The container format: round trips, every rejection path, and fuzzing."""

from __future__ import annotations

import json
import dataclasses
import math
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refcodec.bitstream import (
    FORMAT_VERSION,
    MAGIC,
    BitstreamError,
    Header,
    pack,
    read_header,
    unpack,
)

HASH = bytes(range(16))


def make(streams: list[bytes], **fields: object) -> tuple[Header, list[bytes]]:
    """A header describing ``streams``, with defaults for the other fields."""
    args: dict[str, object] = dict(
        model="grm/small/q3",
        weights_hash=HASH,
        schedule="raster",
        width=768,
        height=512,
        mode="RGB",
        pad_right=0,
        pad_bottom=0,
        stream_lengths=tuple(len(s) for s in streams),
    )
    args.update(fields)
    return Header(**args), streams  # type: ignore[arg-type]


SMALL = pack(*make([b"abc", b"", b"\x00\xff"], model="m"))


def recrc(data: bytes) -> bytes:
    """Replace the trailing CRC so a deliberately edited file passes the checksum."""
    body = data[:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def patched(data: bytes, offset: int, new: bytes) -> bytes:
    """``data`` with ``new`` written at ``offset`` and a fresh CRC."""
    return recrc(data[:offset] + new + data[offset + len(new) :])


@pytest.mark.parametrize(
    ("streams", "fields"),
    [
        ([b"x" * 100], {}),
        ([b"", b"y"], {"schedule": "wavefront", "mode": "L", "pad_right": 5, "pad_bottom": 63}),
        ([bytes(range(256))] * 16, {"width": 1, "height": 65535, "pad_right": 65535}),
        ([b"z"], {"model": "ü" * 127, "weights_hash": b"\xff" * 16, "width": 65535, "height": 1}),
    ],
)
def test_round_trip(streams: list[bytes], fields: dict[str, object]) -> None:
    header, streams = make(streams, **fields)
    data = pack(header, streams)
    assert unpack(data) == (header, streams)
    assert read_header(data) == header
    assert data[:4] == MAGIC and data[4] == FORMAT_VERSION


def test_layout_offsets() -> None:
    header, streams = make(
        [b"AB", b"CDE"], model="m1", schedule="wavefront", mode="L",
        width=0x0102, height=0x0304, pad_right=7, pad_bottom=9,
    )
    data = pack(header, streams)
    assert data[5:9] == bytes([1, 1, 2, 2])  # schedule, mode, model length, stream count
    assert data[9:25] == HASH
    assert struct.unpack_from("<HHHH", data, 25) == (0x0102, 0x0304, 7, 9)
    assert math.isnan(struct.unpack_from("<d", data, 33)[0])  # a fixed-rate file: no quality
    assert struct.unpack_from("<I", data, 41)[0] == 0  # no ICC profile
    assert data[45:47] == b"m1"
    assert struct.unpack_from("<II", data, 47) == (2, 3)
    assert data[55:60] == b"ABCDE"
    assert struct.unpack_from("<I", data, 60)[0] == zlib.crc32(data[:60])
    assert len(data) == 64
    with_profile = pack(dataclasses.replace(header, icc_profile=b"ICCP"), streams)
    assert struct.unpack_from("<I", with_profile, 41)[0] == 4 and with_profile[45:51] == b"m1ICCP"
    assert read_header(with_profile).icc_profile == b"ICCP" and read_header(with_profile).to_dict()["icc_profile_bytes"] == 4


@pytest.mark.parametrize("quality", [0.0, 2.5, 3.0, 7.999999999999999, 1 / 3])
def test_quality_is_recorded_exactly(quality: float) -> None:
    header, streams = make([b"AB"], quality=quality)
    data = pack(header, streams)
    assert struct.unpack_from("<d", data, 33)[0] == quality
    assert read_header(data).quality == quality
    assert header.to_dict()["quality"] == quality


def older(data: bytes, version: int) -> bytes:
    """A version 4 file without an ICC profile written as ``version`` 1, 2 or 3: version 3 has no ICC field,
    version 2 is version 3's layout, version 1 has no quality either."""
    body = data[:4] + bytes([version]) + (data[5:33] if version == 1 else data[5:41]) + data[45:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def test_version_1_files_still_read() -> None:
    """A file of format version 1 (before variable-rate models): the same layout without the quality."""
    header, streams = make([b"AB", b"CDE"], model="m1")
    v1 = older(pack(header, streams), 1)
    assert unpack(v1) == (dataclasses.replace(header, version=1), streams)
    assert read_header(v1).quality is None and not read_header(v1).exact_synthesis


def test_version_2_files_are_read_as_float_synthesis_and_version_3_without_a_profile() -> None:
    """Version 2 has version 3's layout; only version 3 and later are synthesized exactly; version 4 adds the ICC profile."""
    header, streams = make([b"AB", b"CDE"], model="m1", quality=2.5)
    v4 = pack(header, streams)
    v2, v3 = read_header(older(v4, 2)), read_header(older(v4, 3))
    assert v2 == dataclasses.replace(header, version=2) and not v2.exact_synthesis
    assert v3 == dataclasses.replace(header, version=3) and v3.exact_synthesis and v3.icc_profile is None
    assert read_header(v4).exact_synthesis and read_header(v4).to_dict()["format_version"] == 4
    with pytest.raises(ValueError, match="writes format version 4 only"):
        pack(v2, streams)
    with pytest.raises(ValueError, match="format version 3 holds no ICC profile"):
        dataclasses.replace(header, version=3, icc_profile=b"ICCP")


@pytest.mark.parametrize("bad", [math.inf, -math.inf])
def test_non_finite_quality_is_refused(bad: float) -> None:
    header, streams = make([b"AB"])
    data = bytearray(pack(header, streams))
    struct.pack_into("<d", data, 33, bad)
    body = bytes(data[:-4])
    with pytest.raises(BitstreamError, match="quality must be a finite number"):
        unpack(body + struct.pack("<I", zlib.crc32(body)))


def test_to_dict_is_json() -> None:
    header, _ = make([b"ab", b"c"])
    d = header.to_dict()
    assert d["weights_hash"] == HASH.hex()
    assert d["stream_lengths"] == [2, 1]
    assert json.loads(json.dumps(d)) == d


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated file"),
        (b"RF", "truncated file"),
        (b"PNG\x00" + SMALL[4:], "bad magic"),
        (b"\x89PNG", "bad magic"),
        (SMALL[:4] + b"\x07" + SMALL[5:], "unsupported format version 7"),
        (SMALL[:20], "truncated file: header needs 45 bytes, found 20"),
        (SMALL[:8] + b"\x11" + SMALL[9:], "bad stream count 17"),
        (SMALL[:8] + b"\x00" + SMALL[9:], "bad stream count 0"),
        (SMALL[:-1], "truncated file: header says 5 payload bytes"),
        (SMALL + b"\x00", "trailing garbage: 1 bytes"),
        (SMALL[:-1] + bytes([SMALL[-1] ^ 1]), "checksum mismatch"),
        (SMALL[:58] + b"?" + SMALL[59:], "checksum mismatch"),  # a payload byte
        (patched(SMALL, 5, b"\x02"), "unknown schedule code 2"),
        (patched(SMALL, 6, b"\x09"), "unknown image mode code 9"),
        (patched(SMALL, 45, b"\xff"), "model id is not valid UTF-8"),
        (patched(SMALL, 41, b"\xff\xff\xff\x7f"), "implausible ICC profile of 2147483647 bytes"),
        (patched(SMALL, 41, b"\x02\x00\x00\x00"), "truncated file"),  # a profile the file does not hold
        (patched(SMALL, 25, b"\x00\x00"), "invalid header: width must be in 1..65535, got 0"),
        (patched(SMALL, 27, b"\x00\x00"), "invalid header: height must be in 1..65535, got 0"),
        (
            recrc(SMALL[:7] + b"\x00" + SMALL[8:45] + SMALL[46:]),  # drop the 1-byte model id
            "invalid header: model id must be 1..255",
        ),
    ],
)
def test_rejects(data: bytes, message: str) -> None:
    for parse in (unpack, read_header):
        with pytest.raises(BitstreamError, match=message) as info:
            parse(data)
        assert "\n" not in str(info.value)


def test_huge_claimed_lengths_fail_fast() -> None:
    header, streams = make([b"a"] * 16)
    data = bytearray(pack(header, streams))
    lengths_at = 45 + len(header.model)
    data[lengths_at : lengths_at + 64] = b"\xff" * 64
    with pytest.raises(BitstreamError, match="truncated file"):
        unpack(bytes(data))


def test_every_truncation_is_rejected() -> None:
    data = pack(*make([b"payload", b"more"]))
    for n in range(len(data)):
        with pytest.raises(BitstreamError):
            unpack(data[:n])


def test_every_single_bit_flip_is_detected() -> None:
    for i in range(len(SMALL)):
        for bit in range(8):
            flipped = bytearray(SMALL)
            flipped[i] ^= 1 << bit
            with pytest.raises(BitstreamError):
                unpack(bytes(flipped))


@pytest.mark.parametrize(
    "fields",
    [
        {"model": ""},
        {"model": "x" * 256},
        {"model": "\udcff"},
        {"weights_hash": b"\x00" * 15},
        {"schedule": "zigzag"},
        {"mode": "RGBA"},
        {"width": 0},
        {"height": 65536},
        {"pad_right": -1},
        {"pad_bottom": 1.0},
        {"width": True},
        {"stream_lengths": ()},
        {"stream_lengths": (1,) * 17},
        {"stream_lengths": (2**32,)},
    ],
)
def test_header_rejects_bad_fields(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        make([b"a"], **fields)


def test_pack_checks_streams_match_header() -> None:
    header, _ = make([b"ab", b"c"])
    with pytest.raises(ValueError, match="lists 2 streams, got 1"):
        pack(header, [b"ab"])
    with pytest.raises(ValueError, match="stream 1 is 2 bytes, header says 1"):
        pack(header, [b"ab", b"cd"])


headers = st.builds(
    lambda model, h, sched, w, hgt, mode, pr, pb, streams: make(
        streams, model=model, weights_hash=h, schedule=sched, width=w, height=hgt, mode=mode,
        pad_right=pr, pad_bottom=pb,
    ),
    st.text(min_size=1, max_size=63).filter(lambda s: s.isprintable()),
    st.binary(min_size=16, max_size=16),
    st.sampled_from(["raster", "wavefront"]),
    st.integers(1, 65535),
    st.integers(1, 65535),
    st.sampled_from(["RGB", "L"]),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.lists(st.binary(max_size=32), min_size=1, max_size=16),
)


@settings(max_examples=100, deadline=None)
@given(headers)
def test_round_trip_property(case: tuple[Header, list[bytes]]) -> None:
    header, streams = case
    assert unpack(pack(header, streams)) == (header, streams)


def check_only_bitstream_errors(data: bytes) -> None:
    """Parsing either fails with BitstreamError or yields a file that packs back to ``data``."""
    try:
        header, streams = unpack(data)
    except BitstreamError:
        return
    assert pack(header, streams) == data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.binary(max_size=200).map(lambda b: MAGIC + b"\x01" + b))
def test_fuzz_random_bytes(data: bytes) -> None:
    check_only_bitstream_errors(data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_mutations(draw: st.DataObject) -> None:
    data = bytearray(pack(*make([b"abc", b"", b"0123456789"], model="grm/small/q3")))
    for _ in range(draw.draw(st.integers(1, 4))):
        at = draw.draw(st.integers(0, len(data)))
        op = draw.draw(st.sampled_from(["set", "insert", "delete", "cut"]))
        if op == "set" and at < len(data):
            data[at] = draw.draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw.draw(st.integers(1, 8))]
        else:
            del data[at:]
    check_only_bitstream_errors(bytes(data))
