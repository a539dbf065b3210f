"""Position ids of each layout on small worked examples, written out by hand."""

import pytest
import torch

from icae.models import positions as P
from icae.models.templates import Context, Marker, Text
from tests.conftest import make_icae


@pytest.mark.parametrize("length, m, r, expected", [
    (10, 2, 2.5, [(0, 5), (5, 5)]),
    (11, 2, 2.5, [(0, 4), (4, 4), (8, 3)]),
    (5, 2, 2.5, [(0, 5)]),
    (1, 4, 4, [(0, 1)]),
    (0, 4, 4, []),
    (33, 4, 4, [(0, 11), (11, 11), (22, 11)]),
])
def test_segment_bounds(length, m, r, expected):
    assert P.segment_bounds(length, m, r) == expected
    assert P.num_segments(length, m, r) == len(expected)


def _enc(layout, n, seg_start=(0,), ctx_start=(1,), m=2, bos=False):
    n = torch.tensor(n)
    width = int(bos) + int(n.max()) + m
    return P.encoder_positions(layout, n, torch.tensor(seg_start), torch.tensor(ctx_start),
                               width, m, bos).tolist()


def test_encoder_positions_by_hand():
    # One segment of 5 tokens, 2 slots.
    assert _enc("default", [5]) == [[0, 1, 2, 3, 4, 5, 6]]
    # linspace(1, 5, 2) = [1, 5]
    assert _enc("linspace", [5]) == [[1, 2, 3, 4, 5, 1, 5]]
    # EPL, context starting at 1: slot j at 1 + floor((j + 1/2) * 5 / 2) = 2, 4
    assert _enc("epl", [5]) == [[1, 2, 3, 4, 5, 2, 4]]
    # second segment of the same context (a = 5): tokens 6..10, slots 7, 9
    assert _enc("epl", [5], seg_start=(5,)) == [[6, 7, 8, 9, 10, 7, 9]]
    # a BOS takes position 0 in every layout
    assert _enc("epl", [5], bos=True) == [[0, 1, 2, 3, 4, 5, 2, 4]]
    assert _enc("linspace", [5], bos=True) == [[0, 1, 2, 3, 4, 5, 1, 5]]
    # left padding: a 3-token segment next to a 5-token one; pads get 0
    assert _enc("epl", [5, 3], seg_start=(0, 0), ctx_start=(1, 1)) == [
        [1, 2, 3, 4, 5, 2, 4], [0, 0, 1, 2, 3, 1, 3]]
    assert _enc("default", [5, 3], seg_start=(0, 0), ctx_start=(1, 1)) == [
        [0, 1, 2, 3, 4, 5, 6], [0, 0, 0, 1, 2, 3, 4]]


def test_epl_slot_centres_for_equal_blocks():
    # n = m: each slot sits on its own token; n = 2m: on the second token of each pair.
    assert P.memory_slot_offsets(torch.tensor([4]), 4).tolist() == [[0, 1, 2, 3]]
    assert P.memory_slot_offsets(torch.tensor([8]), 4).tolist() == [[1, 3, 5, 7]]


def test_decoder_positions_by_hand(tiny_tok):
    ctx = tuple(range(10, 20))  # 10 tokens, m=2, r=2.5 -> 2 segments of 5
    epl = make_icae(tiny_tok, layout="epl", mem_size=2, rate=2.5)
    ae = epl.encode([Context(ctx), Marker("ae"), Text(ctx + (7,), train=True)])
    # memory slots keep their encoder ids; [AE] at 0; reconstruction restarts at 1
    assert ae.position_ids == [2, 4, 7, 9, 0] + list(range(1, 12))
    assert ae.contexts == [(list(ctx), 1)]
    lm = epl.encode([Context(ctx), Marker("lm"), Text((5, 6, 7), train=True)])
    # text after the memory continues from the last context position (10): LM at 11
    assert lm.position_ids == [2, 4, 7, 9, 11, 12, 13, 14]
    qa = epl.encode([Text((1, 2, 3)), Context(ctx), Marker("ft"), Text((4, 5, 6, 7))])
    # prefix 0..2; context starts at 3: slots 3+1, 3+3, 3+5+1, 3+5+3; FT at 13
    assert qa.position_ids == [0, 1, 2, 4, 6, 9, 11, 13, 14, 15, 16, 17]
    assert qa.contexts == [(list(ctx), 3)]
    assert qa.labels[:8] == [-100] * 8

    default = make_icae(tiny_tok, layout="default", mem_size=2, rate=2.5)
    enc = default.encode([Context(ctx), Marker("ae"), Text(ctx, train=True)])
    assert enc.position_ids == list(range(15))
    linspace = make_icae(tiny_tok, layout="linspace", mem_size=2, rate=2.5)
    assert linspace.encode([Text((1, 2, 3)), Context(ctx)]).position_ids == list(range(7))


def test_short_context_left_uncompressed(tiny_tok):
    model = make_icae(tiny_tok, layout="epl", mem_size=2, rate=2.5, min_compress_len=6)
    enc = model.encode([Text((1,)), Context((10, 11, 12)), Text((2,))])
    assert enc.input_ids == [1, 10, 11, 12, 2]
    assert enc.contexts == []
