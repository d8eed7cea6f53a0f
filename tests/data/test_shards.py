import numpy as np
import pytest

from gptlab.data.shards import HEADER_BYTES, ShardWriter, TokenShards, data_checksum, read_header, read_shard, split_paths, write_shard
from gptlab.errors import GptlabError


def test_write_read_round_trip(tmp_path):
    tokens = np.arange(1000) % 50257
    path = tmp_path / "train-00000.bin"
    write_shard(path, tokens, vocab_size=50257, eot_token=50256)
    assert path.stat().st_size == HEADER_BYTES + 2 * 1000
    assert read_header(path) == {"version": 1, "n_tokens": 1000, "vocab_size": 50257, "eot_token": 50256}
    data = read_shard(path)
    assert data.dtype == np.uint16 and np.array_equal(data, tokens)
    assert not list(tmp_path.glob("*.tmp"))


def test_truncated_foreign_and_extended_files_are_refused(tmp_path):
    path = tmp_path / "train-00000.bin"
    write_shard(path, np.arange(100), vocab_size=256, eot_token=0)
    raw = path.read_bytes()
    path.write_bytes(raw[:-10])
    with pytest.raises(
        GptlabError, match=r"train-00000.bin: truncated: the header says 100 tokens \(264 bytes\) but the file has 254 bytes; re-run `dvc repro tokenize`"
    ):
        read_shard(path)
    path.write_bytes(raw + b"\0\0")
    with pytest.raises(GptlabError, match="longer than its header says"):
        read_shard(path)
    path.write_bytes(b"\x00" * 300)
    with pytest.raises(GptlabError, match="not a gptlab token shard"):
        read_shard(path)
    path.write_bytes(raw[:8] + (2).to_bytes(4, "little") + raw[12:])
    with pytest.raises(GptlabError, match="format version 2"):
        read_shard(path)
    with pytest.raises(GptlabError, match="shard not found"):
        read_shard(tmp_path / "nope.bin")


def test_ids_outside_the_vocabulary_or_uint16_are_refused(tmp_path):
    with pytest.raises(GptlabError, match=r"token ids must lie in \[0, 10\)"):
        write_shard(tmp_path / "x.bin", np.array([1, 10]), vocab_size=10, eot_token=0)
    with pytest.raises(GptlabError, match="does not fit uint16"):
        write_shard(tmp_path / "x.bin", np.array([1]), vocab_size=70000, eot_token=0)


def test_writer_rolls_over_at_max_tokens(tmp_path):
    writer = ShardWriter(tmp_path, "train", max_tokens=1024, vocab_size=3000, eot_token=0)
    parts = [np.arange(i * 100, i * 100 + 700) % 3000 for i in range(4)]  # 2800 tokens
    for part in parts:
        writer.write(part)
    paths = writer.close()
    assert [p.name for p in paths] == ["train-00000.bin", "train-00001.bin", "train-00002.bin"]
    assert [read_header(p)["n_tokens"] for p in paths] == [1024, 1024, 752]
    assert np.array_equal(np.concatenate([read_shard(p) for p in paths]), np.concatenate(parts))
    assert split_paths(tmp_path, "train") == paths
    with pytest.raises(GptlabError, match="no val shards"):
        split_paths(tmp_path, "val")


def make_shards(tmp_path, sizes):
    for i, n in enumerate(sizes):
        write_shard(tmp_path / f"train-{i:05d}.bin", (np.arange(n) + 1000 * i) % 5000, vocab_size=5000, eot_token=0)
    return TokenShards.from_folder(tmp_path, "train")


def test_random_windows_are_next_token_pairs_and_seeded(tmp_path):
    shards = make_shards(tmp_path, [300, 50, 400])
    x, y = shards.random_windows(16, 32, np.random.default_rng(0))
    assert x.shape == y.shape == (16, 32) and x.dtype == y.dtype == __import__("torch").int64
    assert (x[:, 1:] == y[:, :-1]).all()
    # shard i holds consecutive values starting at 1000 * i: each window is a consecutive run
    assert ((y - x) == 1).all()
    x2, _ = shards.random_windows(16, 32, np.random.default_rng(0))
    assert (x == x2).all()
    starts = {int(v) for v in x[:, 0]}
    assert len(starts) > 8


def test_windows_never_cross_a_shard_and_short_shards_are_skipped(tmp_path):
    shards = make_shards(tmp_path, [300, 20, 400])
    rng = np.random.default_rng(1)
    for _ in range(20):
        x, y = shards.random_windows(8, 64, rng)
        assert ((y - x) == 1).all()
        assert not ((x >= 1000) & (x < 2000)).any()  # the 20-token shard cannot hold a window


def test_context_longer_than_every_shard_fails_clearly(tmp_path):
    shards = make_shards(tmp_path, [100])
    with pytest.raises(GptlabError, match=r"context length 100 is too long for these shards \(longest holds 100 tokens"):
        shards.random_windows(2, 100, np.random.default_rng(0))


def test_sequential_windows_cover_in_order(tmp_path):
    shards = make_shards(tmp_path, [101, 51])
    batches = list(shards.sequential_windows(batch=3, context=25))
    xs = np.concatenate([b[0].numpy() for b in batches])
    assert xs.shape == (4 + 2, 25)
    assert xs[0, 0] == 0 and xs[1, 0] == 25 and xs[4, 0] == 1000 and xs[5, 0] == 1025
    assert [len(b[0]) for b in batches] == [3, 3]
    limited = list(shards.sequential_windows(batch=4, context=25, max_windows=5))
    assert sum(len(b[0]) for b in limited) == 5
    assert shards.n_tokens == 152


def test_spread_windows_sample_the_whole_split_evenly_and_the_same_each_time(tmp_path):
    shards = make_shards(tmp_path, [1000, 20, 3000])  # window starts: 1000 - 32 in shard 0, none in shard 1, 3000 - 32 in shard 2
    batches = list(shards.spread_windows(batch=3, context=32, n=8))
    assert [len(b[0]) for b in batches] == [3, 3, 2]
    x = np.concatenate([b[0].numpy() for b in batches])
    y = np.concatenate([b[1].numpy() for b in batches])
    assert ((y - x) == 1).all()  # next-token pairs inside one shard each
    starts = x[:, 0]
    assert sum(1000 <= s < 2000 for s in starts) == 0  # the 20-token shard holds no window
    assert sum(s < 1000 for s in starts) == 2 and sum(s >= 2000 for s in starts) == 6  # about a quarter / three quarters, as the starts are
    offsets = np.where(starts >= 2000, starts - 2000 + 968, starts)  # position among all 3,936 window starts
    assert offsets[0] < 3936 / 8 and offsets[-1] > 3936 * 7 / 8 and (np.diff(offsets) > 0).all()  # first and last eighths, in order
    again = np.concatenate([b[0].numpy() for b in shards.spread_windows(batch=5, context=32, n=8)])
    assert (again == x).all()  # fixed: the same windows whatever the batch size
    assert sum(len(b[0]) for b in shards.spread_windows(batch=4, context=2995, n=100)) == 5  # never more windows than starts (5, all in shard 2)


def test_a_flipped_byte_is_refused_when_the_shards_are_opened(corpus_dir, tmp_path):
    from gptlab.data.tokenize import tokenize_corpus
    from gptlab.params import TokenizeParams

    out = tmp_path / "shards"
    tokenize_corpus(TokenizeParams(val_fraction=0.2, workers=1), corpus_dir, out, seed=1)
    assert TokenShards.from_folder(out, "train").n_tokens > 0
    path = out / "train-00000.bin"
    raw = bytearray(path.read_bytes())
    raw[HEADER_BYTES + 5] ^= 0x01  # still a valid id below the vocabulary: only the checksum sees it
    path.write_bytes(bytes(raw))
    with pytest.raises(
        GptlabError, match=r"train-00000.bin: data checksum crc32 [0-9a-f]{8} does not match meta.json \([0-9a-f]{8}\): the file is corrupt; re-run"
    ):
        TokenShards.from_folder(out, "train")


def test_ids_outside_the_header_vocabulary_are_refused_on_open(tmp_path):
    path = tmp_path / "train-00000.bin"
    write_shard(path, np.arange(100) % 50, vocab_size=50, eot_token=0)
    raw = bytearray(path.read_bytes())
    raw[HEADER_BYTES + 2 * 7 : HEADER_BYTES + 2 * 8] = (60000).to_bytes(2, "little")  # no meta.json: no checksum to compare
    path.write_bytes(bytes(raw))
    with pytest.raises(GptlabError, match=r"train-00000.bin: token id 60000 \(first bad one at position 7\) is outside the header's vocab_size 50"):
        TokenShards.from_folder(tmp_path, "train")
    with pytest.raises(GptlabError, match="outside the header's vocab_size"):
        read_shard(path)


def shard_fds(folder) -> int:
    """How many of this process's open file descriptors point into ``folder``."""
    import os

    fds = os.listdir("/proc/self/fd")
    return sum(1 for fd in fds if os.path.realpath(f"/proc/self/fd/{fd}").startswith(str(folder)))


def test_thousands_of_shards_open_lazily_with_bounded_maps(tmp_path):
    import time

    n = 2000
    for i in range(n):  # shard i holds 100 consecutive ids starting at i * 10
        write_shard(tmp_path / f"train-{i:05d}.bin", np.arange(100) + i * 10, vocab_size=30000, eot_token=0)
    start = time.perf_counter()
    shards = TokenShards.from_folder(tmp_path, "train", max_open=16)
    assert time.perf_counter() - start < 2.0 and shards.n_tokens == n * 100
    assert shards.open_count == 16 and shard_fds(tmp_path) <= 16
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(50):
        x, y = shards.random_windows(32, 20, rng)
        assert ((y - x) == 1).all()
        seen.update((x[:, 0] // 10).tolist())  # about the shard index
        assert shards.open_count <= 16 and shard_fds(tmp_path) <= 16
    assert len(seen) > 500  # windows come from many shards
    batches = list(shards.sequential_windows(batch=64, context=50))
    assert sum(len(b[0]) for b in batches) == n and shard_fds(tmp_path) <= 16


def test_a_corrupt_shard_among_many_is_refused_when_first_read(tmp_path):
    for i in range(40):
        write_shard(tmp_path / f"train-{i:05d}.bin", np.arange(100) % 50, vocab_size=50, eot_token=0)
    path = tmp_path / "train-00039.bin"
    raw = bytearray(path.read_bytes())
    raw[HEADER_BYTES : HEADER_BYTES + 2] = (60000).to_bytes(2, "little")
    path.write_bytes(bytes(raw))
    shards = TokenShards.from_folder(tmp_path, "train", max_open=4)  # shard 39 is not mapped yet
    with pytest.raises(GptlabError, match=r"train-00039.bin: token id 60000 \(first bad one at position 0\) is outside the header's vocab_size 50"):
        shards.gather(np.array([39]), np.array([0]), 10)


def test_the_lazy_reader_draws_the_windows_the_eager_one_drew(tmp_path):
    # pinned from the reader that mapped every shard up front: resumed and default runs stay bit-identical
    shards = make_shards(tmp_path, [300, 50, 400])
    x, _ = shards.random_windows(8, 32, np.random.default_rng(123))
    assert x[:, 0].tolist() == [2301, 238, 137, 65, 220, 2078, 2272, 168]


def test_writer_streams_exact_multiples_checksums_and_refuses_foreign_ids(tmp_path):
    writer = ShardWriter(tmp_path, "val", max_tokens=100, vocab_size=500, eot_token=0)
    writer.write(np.arange(150, dtype=np.uint32))
    writer.write(np.arange(50, dtype=np.uint16))  # fills shard 1 exactly: no empty third shard
    paths = writer.close()
    assert [read_header(p)["n_tokens"] for p in paths] == [100, 100]
    assert writer.tokens == 200 and not list(tmp_path.glob("*.tmp"))
    assert writer.checksums == [data_checksum(read_shard(p)) for p in paths]
    assert np.array_equal(read_shard(paths[1]), np.r_[np.arange(100, 150), np.arange(50)])
    bad = ShardWriter(tmp_path / "bad", "train", max_tokens=100, vocab_size=500, eot_token=0)
    with pytest.raises(GptlabError, match=r"train-00000.bin: token ids must lie in \[0, 500\); got -1..3"):
        bad.write(np.array([3, -1]))
    with pytest.raises(GptlabError, match="got 0..500"):
        bad.write(np.array([0, 500], dtype=np.uint16))
    empty = ShardWriter(tmp_path, "empty", max_tokens=100, vocab_size=500, eot_token=0)
    assert [read_header(p)["n_tokens"] for p in empty.close()] == [0]
