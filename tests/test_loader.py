import pytest

from helpers import make_voc
from multibox.data.loader import EpochShuffleSampler, NoSingleBatches, make_loader
from multibox.data.transforms import SSDTransform
from multibox.data.voc import voc_dataset


@pytest.mark.parametrize(
    "size, batch, sizes",
    [(1, 4, [2]), (5, 4, [5]), (9, 8, [9]), (3, 2, [3]), (6, 4, [4, 2]), (4, 4, [4]), (2, 8, [2])],
)
def test_no_batch_of_one(size, batch, sizes):
    sampler = EpochShuffleSampler(size, shuffle=True, seed=0)
    batches = list(NoSingleBatches(sampler, batch))
    assert [len(b) for b in batches] == sizes and len(NoSingleBatches(sampler, batch)) == len(sizes)
    keys = [k for b in batches for k in b]
    assert sorted({i for _, i in keys}) == list(range(size))  # every image, each epoch


@pytest.mark.parametrize("n, batch, expect", [(5, 4, [5]), (1, 4, [2]), (9, 4, [4, 4]), (7, 4, [4, 3])])
def test_training_loader_never_yields_a_batch_of_one(tmp_path, n, batch, expect):
    ds = voc_dataset(make_voc(str(tmp_path / "voc"), n=n), "train").with_transform(SSDTransform((64, 64), train=False))
    loader = make_loader(ds, batch, train=True, workers=0)
    loader.batch_sampler.sampler.set_epoch(3)
    assert [len(b["images"]) for b in loader] == expect
    assert len(loader) == len(expect)
    assert [len(b) for b in make_loader(ds, batch, train=False, workers=0).batch_sampler] == [
        min(batch, n - i) for i in range(0, n, batch)
    ]  # scoring keeps every image once, in order
