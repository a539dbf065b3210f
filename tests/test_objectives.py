"""The objective enum: task ids, markers and loss keys all come from icae.models.objectives."""

import pytest
import torch

from icae.models.objectives import MARKERS, Objective
from tests.conftest import make_icae


def test_markers_and_loss_keys_follow_the_enum():
    # [RECALL] came last: the rows of checkpoints written before it keep their meaning
    assert [int(o) for o in Objective] == [0, 1, 2, 3]
    assert MARKERS == ("ae", "lm", "ft", "recall")
    assert [o.loss_key for o in Objective] == ["ae_loss", "lm_loss", "ft_loss", "recall_loss"]
    assert Objective.from_marker("lm") is Objective.LM
    with pytest.raises(ValueError,
                       match="unknown objective 'qa'; expected one of ae, lm, ft, recall"):
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
    for marker in ("ae", "lm", "recall"):
        pieces, task = pretrain_pieces(model, {"task": marker, "context_ids": ctx[:6],
                                               "continuation_ids": ctx[6:],
                                               "prompt_ids": ctx[1:3]})
        assert task is Objective.from_marker(marker)
        encoded.append(model.encode(pieces, task=task))
    # recall: the marker, then the quoted prompt (no loss), then the target (loss)
    recall = encoded[-1]
    at = recall.input_ids.index(model.marker_ids["recall"])
    assert recall.input_ids[at + 1:at + 3] == ctx[1:3]
    assert [t for t in recall.labels if t != -100] == ctx[6:]
    assert model.encode(model.prompts.autoencoding(ctx)).task == Objective.FT
    with torch.no_grad():
        out = model(**collate(encoded, model.pad_id))
    assert int(out[Objective.FT.tokens_key]) == 0
    assert int(out[Objective.AE.tokens_key]) > 0 and int(out[Objective.LM.tokens_key]) > 0
    assert int(out[Objective.RECALL.tokens_key]) == len(ctx[6:])
    for o in Objective:
        assert {o.loss_key, o.loss_sum_key, o.tokens_key} <= set(out)
