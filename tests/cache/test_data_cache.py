"""Data cache: items by content id, tensors cached per (item, preprocessing) in binary
form with their geometry, LRU byte bound, delete, restart persistence."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.cache.data import DataCache, decode_tensor, encode_tensor, prep_key
from edge_agent.errors import ImageDecodeError
from edge_agent.runtime.package import Manifest, read_manifest
from edge_agent.runtime.preprocess import Geometry, preprocess
from edge_agent.storage import NotFound, Storage
from tests.conftest import DATA, MODELS

CAT = (DATA / "cat.jpg").read_bytes()
FACE = read_manifest(MODELS / "face" / "1")
DIGITS = read_manifest(MODELS / "digits" / "1")


def png(seed: int, size: tuple[int, int] = (120, 90)) -> bytes:
    rng = np.random.default_rng(seed)
    ok, buf = cv2.imencode(".png", rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    assert ok
    return buf.tobytes()


def tensor_bytes(manifest: Manifest) -> int:
    t, g = preprocess(png(0), manifest.preprocessing)  # type: ignore[arg-type]
    return len(encode_tensor(t, g))


class Events(dict[str, int]):
    def __call__(self, event: str, n: int) -> None:
        self[event] = self.get(event, 0) + n


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "agent.sqlite3"


@pytest.fixture
def cache(db: Path) -> Iterator[DataCache]:
    c = DataCache(Storage(db), max_bytes=10 << 20)
    yield c
    c.close()


def test_register_is_content_addressed(cache: DataCache) -> None:
    item_id = cache.register(CAT, "image/jpeg")
    assert item_id == hashlib.sha256(CAT).hexdigest()
    assert cache.register(CAT) == item_id  # same bytes, same item
    item = cache.item(item_id)
    assert (item.content_type, item.size, item.cached) == ("image/jpeg", len(CAT), {})
    assert (item.width, item.height) == (768, 1024)  # as stored, before the EXIF rotation
    with pytest.raises(ImageDecodeError):
        cache.register(b"not an image at all")
    with pytest.raises(NotFound):
        cache.item("0" * 64)


def test_second_tensor_is_a_hit_with_the_same_tensor_and_geometry(cache: DataCache) -> None:
    item_id = cache.register(CAT)
    t0 = time.perf_counter()
    miss, geo_miss, hit_miss = cache.tensor(item_id, FACE)
    t1 = time.perf_counter()
    hit, geo_hit, hit_hit = cache.tensor(item_id, FACE)
    t2 = time.perf_counter()
    assert (hit_miss, hit_hit) == (False, True)
    np.testing.assert_array_equal(hit, miss)
    assert hit.dtype == np.float32 and hit.shape == (128, 128, 3)
    assert geo_hit == geo_miss
    direct, direct_geo = preprocess(CAT, FACE.preprocessing)  # type: ignore[arg-type]
    np.testing.assert_array_equal(hit, direct)
    assert geo_hit == direct_geo
    stored = len(encode_tensor(hit, geo_hit))
    assert cache.item(item_id).cached == {prep_key(FACE.preprocessing): stored}  # type: ignore[arg-type]
    print(f"cat.jpg tensor for face: miss {(t1 - t0) * 1e3:.2f} ms, hit {(t2 - t1) * 1e3:.3f} ms")


def test_each_preprocessing_has_its_own_entry(cache: DataCache) -> None:
    item_id = cache.register(CAT)
    cache.tensor(item_id, FACE)
    digits_tensor, _, hit = cache.tensor(item_id, DIGITS)
    assert not hit and digits_tensor.shape == (1, 8, 8)
    bumped = FACE.model_copy(
        update={"preprocessing": FACE.preprocessing.model_copy(update={"version": "2"})}  # type: ignore[union-attr]
    )
    assert not cache.tensor(item_id, bumped)[2]  # a new preprocessing version never meets the old tensor
    assert len(cache.item(item_id).cached) == 3


def test_byte_bound_evicts_least_recently_used(db: Path) -> None:
    size = tensor_bytes(FACE)
    events = Events()
    cache = DataCache(Storage(db), max_bytes=2 * size + 100, on_event=events)
    a, b, c = (cache.register(png(i)) for i in range(3))
    cache.tensor(a, FACE)
    cache.tensor(b, FACE)
    assert cache.tensor(a, FACE)[2]  # a is now more recent than b
    cache.tensor(c, FACE)
    assert [bool(cache.item(i).cached) for i in (a, b, c)] == [True, False, True]
    assert cache.used_bytes() == sum(sum(cache.item(i).cached.values()) for i in (a, c))
    assert events == {"miss": 3, "hit": 1, "eviction": 1}
    assert not cache.tensor(b, FACE)[2]


def test_a_hit_writes_nothing_until_the_batch_is_flushed(cache: DataCache, db: Path) -> None:
    item_id = cache.register(CAT)
    cache.tensor(item_id, FACE)
    last_used = "SELECT last_used FROM data_cache"
    before = Storage(db).conn.execute(last_used).fetchone()[0]
    assert cache.tensor(item_id, FACE)[2]
    assert Storage(db).conn.execute(last_used).fetchone()[0] == before
    cache.flush()
    assert Storage(db).conn.execute(last_used).fetchone()[0] > before


def test_delete_removes_the_item_and_its_tensors(cache: DataCache) -> None:
    item_id = cache.register(CAT)
    cache.tensor(item_id, FACE)
    assert cache.used_bytes() > 0
    cache.delete(item_id)
    assert cache.used_bytes() == 0
    with pytest.raises(NotFound):
        cache.tensor(item_id, FACE)
    with pytest.raises(NotFound):
        cache.delete(item_id)
    with pytest.raises(NotFound):
        cache.require("../etc/passwd")


def test_tensors_survive_a_restart(db: Path) -> None:
    first = DataCache(Storage(db), max_bytes=10 << 20)
    item_id = first.register(CAT)
    tensor, geo, _ = first.tensor(item_id, FACE)
    first.close()
    again = DataCache(Storage(db), max_bytes=10 << 20)
    t2, g2, hit = again.tensor(item_id, FACE)
    assert hit and g2 == geo
    np.testing.assert_array_equal(t2, tensor)
    assert again.used_bytes() == len(encode_tensor(tensor, geo))


def test_a_smaller_bound_at_start_evicts_at_once(db: Path) -> None:
    big = DataCache(Storage(db), max_bytes=10 << 20)
    for i in range(3):
        big.tensor(big.register(png(i)), FACE)
    small = DataCache(Storage(db), max_bytes=tensor_bytes(FACE) + 100)
    assert 0 < small.used_bytes() <= tensor_bytes(FACE) + 100


def test_binary_form_round_trips() -> None:
    t = np.random.default_rng(1).random((3, 4, 5), dtype=np.float32)
    g = Geometry(10, 20, 0.5, 0.25, pad_x=3.0, crop_y=1.5)
    t2, g2 = decode_tensor(encode_tensor(t, g))
    np.testing.assert_array_equal(t2, t)
    assert g2 == g
