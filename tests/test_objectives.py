"""The objective enum: task ids, markers and loss keys all come from icae.models.objectives."""

import pytest
import torch

from icae.models.objectives import MARKERS, Objective
from tests.conftest import make_icae


def test_markers_and_loss_keys_follow_the_enum():
    assert [int(o) for o in Objective] == [0, 1, 2]
    assert MARKERS == ("ae", "lm", "ft")
    assert [o.loss_key for o in Objective] == ["ae_loss", "lm_loss", "ft_loss"]
    assert Objective.from_marker("lm") is Objective.LM
    with pytest.raises(ValueError, match="unknown objective 'qa'; expected one of ae, lm, ft"):
        Objective.from_marker("qa")


def test_marker_rows_and_per_objective_losses(tiny_tok):
    from icae.models.base import collate
    from icae.training.examples import pretrain_pieces

    model = make_icae(tiny_tok)
    # Marker embeddings sit after the memory slots, one row per objective in enum order.
    first = model.vocab_size + model.mem_size
    assert model.marker_ids == {o.marker: first + int(o) for o in Objective}
    ctx = tiny_tok("The quick brown fox jumps over the lazy dog.")["input_ids"]
    encoded = []
    for marker in ("ae", "lm"):
        pieces, task = pretrain_pieces(model, {"task": marker, "context_ids": ctx[:6],
                                               "continuation_ids": ctx[6:]})
        assert task is Objective.from_marker(marker)
        encoded.append(model.encode(pieces, task=task))
    assert model.encode(model.prompts.autoencoding(ctx)).task == Objective.FT
    with torch.no_grad():
        out = model(**collate(encoded, model.pad_id))
    assert int(out[Objective.FT.tokens_key]) == 0
    assert int(out[Objective.AE.tokens_key]) > 0 and int(out[Objective.LM.tokens_key]) > 0
    for o in Objective:
        assert {o.loss_key, o.loss_sum_key, o.tokens_key} <= set(out)
