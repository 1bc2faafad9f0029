"""Decode levers: BatchNorm folding, batched VGG and the bucketed (graph) decode must
leave RoMa's results where romatch's own modules put them."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import TEST_UPSAMPLE, roma_config
from roma_ros.matching.fast_decode import buckets_for, folded_sequential
from roma_ros.matching.roma import RomaMatcher
from roma_ros.demo.photo_pairs import load_photo


def block_with_trained_norm(depthwise: bool, bias: bool) -> nn.Sequential:
    """A refiner block (conv, BatchNorm, ReLU, 1x1 conv) whose norm has non-trivial statistics:
    with RoMa's random weights the norms are identities and folding them proves nothing."""
    torch.manual_seed(1)
    channels = 6
    block = nn.Sequential(nn.Conv2d(channels, channels, 5, padding=2, groups=channels if depthwise else 1, bias=bias),
                          nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.Conv2d(channels, channels, 1))
    norm = block[1]
    norm.running_mean.uniform_(-2, 2)
    norm.running_var.uniform_(0.1, 3)
    nn.init.uniform_(norm.weight, -2, 2)
    nn.init.uniform_(norm.bias, -1, 1)
    return block.eval()


@pytest.mark.parametrize("depthwise", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_folded_block_computes_the_same(depthwise, bias):
    block = block_with_trained_norm(depthwise, bias)
    folded = folded_sequential(block)
    assert isinstance(folded[1], nn.Identity) and folded[3] is block[3]
    x = torch.randn(2, 6, 9, 11).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected, got = block(x), folded(x)
    assert expected.abs().max() > 1
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # The original block is untouched (romatch's own match() still runs it).
    assert isinstance(block[1], nn.BatchNorm2d) and block[0].weight is not folded[0].weight


def test_buckets_cover_every_batch_up_to_the_batch_size():
    assert buckets_for(1) == [1]
    assert buckets_for(8) == [1, 2, 4, 8]
    assert buckets_for(10) == [1, 2, 4, 8, 10]


@pytest.mark.parametrize("symmetric", [True, False])
def test_padded_buckets_decode_like_one_batch(roma_model, symmetric):
    """Three candidates padded to the bucket of 4, then one in the bucket of 1, through the
    graph path's buffers (decoded eagerly: the CPU has no graphs) give the plain decode's warps."""
    import cv2

    a = cv2.resize(load_photo("astronaut"), (150, 90))
    b = cv2.resize(load_photo("coffee"), (70, 130))
    matcher = RomaMatcher(roma_config(upsample_res=TEST_UPSAMPLE, symmetric=symmetric, batch_size=4),
                          model=roma_model)
    query, cands = matcher.encode(a), [matcher.encode(b), matcher.encode(a), matcher.encode(b)]
    plain = matcher.decode(query, cands)
    matcher._graphed = matcher.graphed_decode(capture=False)
    assert matcher._graphed.bucket(3) == 4
    padded = matcher.decode(query, cands)
    single = matcher.decode(query, cands[1:2])
    for got, expected in zip(padded + single, plain + plain[1:2]):
        torch.testing.assert_close(got.warp, expected.warp, atol=1e-5, rtol=0)
        torch.testing.assert_close(got.certainty, expected.certainty, atol=1e-5, rtol=0)
    assert not torch.equal(plain[0].warp, plain[1].warp)  # the candidates differ: rows cannot be mixed up


def test_unfolded_option_keeps_romatch_refiners(roma_model):
    from roma_ros.matching.fast_decode import DecodeOptions

    matcher = RomaMatcher(roma_config(), model=roma_model, options=DecodeOptions(fold_batchnorm=False))
    assert list(matcher._refiners) == list(roma_model.decoder.conv_refiner.values())
    folded = RomaMatcher(roma_config(), model=roma_model)
    assert all(isinstance(r.block1[1], nn.Identity) for r in folded._refiners)
    assert all(isinstance(r.block1[1], nn.BatchNorm2d) for r in roma_model.decoder.conv_refiner.values())


def test_batched_vgg_gives_each_image_its_own_decoder_inputs(roma_model):
    import cv2

    images = [cv2.resize(load_photo(name), (120, 100)) for name in ("astronaut", "coffee", "chelsea")]
    matcher = RomaMatcher(roma_config(upsample_res=TEST_UPSAMPLE), model=roma_model)
    prepared = [matcher.prepare(x) for x in images]
    one_by_one = matcher.decoder_inputs_many(prepared)
    matcher.batch_vgg = True  # what a GPU does
    batched = matcher.decoder_inputs_many(prepared)
    for (coarse, fine), (coarse_b, fine_b) in zip(one_by_one, batched):
        for scale in coarse:
            torch.testing.assert_close(coarse_b[scale], coarse[scale], atol=1e-4, rtol=1e-4)
        for scale in fine:
            torch.testing.assert_close(fine_b[scale], fine[scale], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(batched[0][0][1], batched[1][0][1])  # images differ: no mix-up possible
