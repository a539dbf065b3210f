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


def _enc(layout, n, seg_start=(0,), ctx_start=(1,), m=2, bos=False, k=None):
    n = torch.tensor(n)
    k = torch.tensor(k) if k is not None else torch.full_like(n, m)
    width = int(bos) + int((n + k).max())
    return P.encoder_positions(layout, n, k, torch.tensor(seg_start), torch.tensor(ctx_start),
                               width, bos).tolist()


def test_encoder_positions_by_hand():
    # One segment of 5 tokens, 2 slots.
    assert _enc("default", [5]) == [[0, 1, 2, 3, 4, 5, 6]]
    # linspace(1, 5, 2) = [1, 5]
    assert _enc("linspace", [5]) == [[1, 2, 3, 4, 5, 1, 5]]
    # EPL, context starting at 1: slot j at 1 + ceil((j + 1/2) * 5 / 2) - 1 = 2, 4
    assert _enc("epl", [5]) == [[1, 2, 3, 4, 5, 2, 4]]
    # second segment of the same context (a = 5): tokens 6..10, slots 7, 9
    assert _enc("epl", [5], seg_start=(5,)) == [[6, 7, 8, 9, 10, 7, 9]]
    # blocks of even length (n = 8, k = 2, blocks of 4): the lower middle token, 1 + 1, 1 + 5
    assert _enc("epl", [8]) == [[1, 2, 3, 4, 5, 6, 7, 8, 2, 6]]
    # rows with different slot counts: 6 tokens / 3 slots next to 3 tokens / 1 slot
    assert _enc("epl", [6, 3], seg_start=(0, 0), ctx_start=(1, 1), k=[3, 1]) == [
        [1, 2, 3, 4, 5, 6, 1, 3, 5], [1, 2, 3, 2, 0, 0, 0, 0, 0]]
    assert _enc("linspace", [6, 3], seg_start=(0, 0), ctx_start=(1, 1), k=[3, 1]) == [
        [1, 2, 3, 4, 5, 6, 1, 3, 6], [1, 2, 3, 1, 0, 0, 0, 0, 0]]
    # a BOS takes position 0 in every layout
    assert _enc("epl", [5], bos=True) == [[0, 1, 2, 3, 4, 5, 2, 4]]
    assert _enc("linspace", [5], bos=True) == [[0, 1, 2, 3, 4, 5, 1, 5]]
    # right padding: a 3-token segment next to a 5-token one; pads (last) get 0
    assert _enc("epl", [5, 3], seg_start=(0, 0), ctx_start=(1, 1)) == [
        [1, 2, 3, 4, 5, 2, 4], [1, 2, 3, 1, 3, 0, 0]]
    assert _enc("default", [5, 3], seg_start=(0, 0), ctx_start=(1, 1)) == [
        [0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 0, 0]]


def _authors_uniform_position_ids(x_1, x_n, ratio):
    # 1azybug/UPL model/modeling.py, CompressLLM.get_uniform_position_ids (EPL authors).
    return list(range(x_1 + (ratio - 1) // 2, x_n, ratio))


@pytest.mark.parametrize("mem, ratio, chunks", [(128, 4, 1), (128, 4, 3), (32, 4, 2),
                                                 (16, 2, 1), (8, 3, 2), (4, 8, 5)])
def test_epl_matches_the_authors_reference_formula(mem, ratio, chunks):
    # The authors compress fixed chunks of mem * ratio tokens, context positions from 1.
    # (Their arange stops one id short at ratio 1, so ratios >= 2 only.)
    chunk = mem * ratio
    length = chunk * chunks
    expected = []
    for c in range(chunks):
        expected += _authors_uniform_position_ids(c * chunk + 1, c * chunk + chunk, ratio)
    assert P.epl_memory_positions(length, 1, mem, ratio) == expected
    assert P.epl_memory_positions(length, 1, mem, ratio, "fixed") == expected


def test_epl_slot_offsets_for_equal_blocks():
    # n = k: each slot sits on its own token; n = 2k: on the first token of each pair
    # (lower middle, as the authors' (r - 1) // 2); odd blocks: the middle token.
    assert P.memory_slot_offsets(torch.tensor([4]), torch.tensor([4]), 4).tolist() == [[0, 1, 2, 3]]
    assert P.memory_slot_offsets(torch.tensor([8]), torch.tensor([4]), 4).tolist() == [[0, 2, 4, 6]]
    assert P.memory_slot_offsets(torch.tensor([9]), torch.tensor([3]), 3).tolist() == [[1, 4, 7]]


@pytest.mark.parametrize("length, m, r, rule, slots", [
    (512, 128, 4, "proportional", 128), (166, 128, 4, "proportional", 42),
    (3, 128, 4, "proportional", 1), (513, 128, 4, "proportional", 129),
    (166, 128, 4, "fixed", 128), (100, 128, 4, "fixed", 0), (128, 128, 4, "fixed", 128), (513, 128, 4, "fixed", 256),
    (0, 16, 4, "proportional", 0),
])
def test_context_slots_never_exceed_tokens(length, m, r, rule, slots):
    assert P.context_slots(length, m, r, rule) == slots
    assert P.context_slots(length, m, r, rule) <= length


def test_proportional_rule_keeps_the_rate():
    for length in range(1, 2000, 7):
        k = P.context_slots(length, 16, 4)
        assert k <= length and k >= length / 4 and k <= length / 4 + P.num_segments(length, 16, 4)


def test_decoder_positions_by_hand(tiny_tok):
    ctx = tuple(range(10, 20))  # 10 tokens, m=2, r=2.5 -> 2 segments of 5, 2 slots each
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
