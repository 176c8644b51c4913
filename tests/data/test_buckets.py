import pytest

from lightbagel.data.buckets import Bucketer, Pending, fit_size


@pytest.mark.parametrize("size,expected", [
    ((512, 512), (512, 512)),
    ((256, 384), (512, 768)),      # scaled up to the short side, aspect ratio kept
    ((3000, 2000), (1024, 672)),   # scaled down to the long side, rounded down to 32
    ((4000, 500), (1024, 128)),    # extreme aspect ratio: the long limit wins
    ((700, 1000), (700 // 32 * 32, 992)),
])
def test_fit_size_keeps_aspect_within_limits(size, expected):
    assert fit_size(*size, 512, 1024, 32) == expected


def test_token_budget_batches():
    b = Bucketer(max_batch=100, token_budget=100)
    assert b.add((16, 16), Pending(0, 40, {})) is None
    assert b.add((32, 16), Pending(1, 90, {})) is None  # another size waits in its own bucket
    assert b.add((16, 16), Pending(2, 40, {})) is None
    full = b.add((16, 16), Pending(3, 40, {}))  # 120 > 100: the first two go, the third waits
    assert [p.draw for p in full] == [0, 2] and b.pending() == [1, 3]
    assert b.oldest().draw == 1 and [p.draw for p in b.pop_oldest()] == [1]


def test_fixed_batch_size_without_budget():
    b = Bucketer(max_batch=2)
    assert b.add((8, 8), Pending(0, 1000, {})) is None
    assert [p.draw for p in b.add((8, 8), Pending(1, 1000, {}))] == [0, 1]


def test_packed_rows_mix_image_sizes_and_fill_to_the_budget():
    """With `mix_sizes` one row takes every image size (und samples keep their own buffer); a row is
    sent once it holds the budget, and a sample that would take it past `max_tokens` starts the next."""
    b = Bucketer(max_batch=100, token_budget=100, max_tokens=120, mix_sizes=True)
    assert b.add((16, 16), Pending(0, 40, {})) is None
    assert b.add((32, 16), Pending(1, 50, {})) is None  # another size joins the same row
    assert b.add(("und", 8, 8), Pending(2, 30, {})) is None  # a chat sample waits apart
    full = b.add((16, 32), Pending(3, 30, {}))  # 120 <= max_tokens and >= the budget: sent with it
    assert [p.draw for p in full] == [0, 1, 3] and b.pending() == [2]
    assert b.add((16, 16), Pending(4, 90, {})) is None
    full = b.add((16, 16), Pending(5, 40, {}))  # 130 > 120: the row goes short, the sample waits
    assert [p.draw for p in full] == [4] and b.pending() == [2, 5]


def test_padded_batches_keep_one_size_and_the_budget_is_the_cap():
    b = Bucketer(max_batch=100, token_budget=100, mix_sizes=False)
    assert b.add((16, 16), Pending(0, 60, {})) is None
    assert b.add((32, 16), Pending(1, 60, {})) is None
    assert [p.draw for p in b.add((16, 16), Pending(2, 60, {}))] == [0]
