"""Distillation: the student keeps evenly spaced teacher layers, learns from soft and true labels, and goes
through evaluate -> gate -> register with its teacher recorded."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import LOOSE_GATE, TINY_TRAIN, sentiment_rows, write
from tuneloop import registry
from tuneloop.compress.distill import NO_LABEL, DistillError, distill_loss, hidden_loss, kept_layers, make_student


def test_kept_layers_are_every_kth_ending_at_the_top():
    assert kept_layers(6, 3) == [1, 3, 5] and kept_layers(12, 4) == [2, 5, 8, 11] and kept_layers(6, 1) == [5]
    assert kept_layers(6, 5) == [0, 1, 3, 4, 5] and kept_layers(2, 1) == [1]
    for bad in (0, 6, 7):
        with pytest.raises(DistillError, match="fewer than the teacher's 6"):
            kept_layers(6, bad)


def test_the_student_starts_as_the_teachers_kept_layers():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, num_labels=3
    )
    teacher = BertForSequenceClassification(config).eval()
    student = make_student(teacher, 2)  # keeps layers 1 and 3
    assert student.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 4
    t, s = teacher.state_dict(), student.state_dict()
    for name in ("bert.embeddings.word_embeddings.weight", "classifier.weight", "bert.pooler.dense.weight"):
        assert torch.equal(t[name], s[name])
    assert torch.equal(s["bert.encoder.layer.1.output.dense.weight"], t["bert.encoder.layer.3.output.dense.weight"])
    assert torch.equal(s["bert.encoder.layer.0.output.dense.weight"], t["bert.encoder.layer.1.output.dense.weight"])
    assert not torch.equal(s["bert.encoder.layer.0.output.dense.weight"], t["bert.encoder.layer.0.output.dense.weight"])


def test_the_loss_reads_soft_labels_and_skips_missing_true_labels():
    student = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    agreeing = distill_loss(student, student.clone(), torch.tensor([NO_LABEL, NO_LABEL]), 2.0, 1.0)
    disagreeing = distill_loss(student, student.flip(1), torch.tensor([NO_LABEL, NO_LABEL]), 2.0, 1.0)
    assert float(agreeing) == pytest.approx(0, abs=1e-6) and float(disagreeing) > 0.1
    hard_only = distill_loss(student, None, torch.tensor([0, NO_LABEL]), 2.0, 0.5)
    expected = torch.nn.functional.cross_entropy(student[:1], torch.tensor([0]))
    assert float(hard_only) == pytest.approx(float(expected))


def test_the_hidden_loss_compares_directions_layer_by_layer():
    torch.manual_seed(0)
    teacher = torch.randn(4, 3, 8)  # rows, layers, hidden
    assert float(hidden_loss(teacher * 5, teacher)) == pytest.approx(0, abs=1e-6)  # scale is not what it matches
    assert float(hidden_loss(-teacher, teacher)) == pytest.approx(4.0)  # opposite directions: |2u|^2
    one_layer_off = teacher.clone()
    one_layer_off[:, 1] = torch.randn(4, 8)
    assert 0 < float(hidden_loss(one_layer_off, teacher)) < float(hidden_loss(-teacher, teacher))


LOOSE = [
    *TINY_TRAIN,
    *LOOSE_GATE,
    "train.epochs=3",
    "gate.alpha=1e-9",  # nor whether it is worse than its teacher
    "gate.max_slice_drop=1",
    "serve.backend=torch",
]


def test_distill_registers_a_student_with_its_teacher(cli, project, tiny_model, store):
    from tuneloop.config import load_params
    from tuneloop.train import train

    paths = [
        write(project / f"{s}.csv", sentiment_rows(n, seed))
        for s, n, seed in (("tr", 24, 0), ("va", 6, 1), ("te", 8, 2))
    ]
    train(
        load_params(project / "params.yaml", LOOSE),
        paths[0],
        paths[1],
        project / "teacher",
        base=str(tiny_model),
        live_dir=None,
    )
    teacher = registry.register(project / "teacher").tag
    registry.promote(teacher, reason="test teacher")
    sets = [arg for item in LOOSE for arg in ("--set", item)]
    result = cli(
        "distill",
        "--teacher",
        teacher,
        "--student-layers",
        "1",
        "--train",
        str(paths[0]),
        "--val",
        str(paths[1]),
        "--test",
        str(paths[2]),
        "--out",
        str(project / "student"),
        *sets,
        "--set",
        "distill.augment_copies=1",
        "--set",
        "distill.hidden_weight=1",
    )
    assert result.exit_code == 0, result.output
    student = next(e for e in registry.entries() if e.tag != teacher)
    assert student.metadata["distillation"]["teacher"] == teacher
    assert student.metadata["distillation"]["kept_layers"] == [1] and student.stage == "challenger"
    # one noisy copy of each of the 72 training texts, teacher-labelled (a copy may repeat a text: then none)
    recorded = student.metadata["distillation"]
    assert 60 <= recorded["augmented_rows"] <= 72 and recorded["transfer_rows"] == recorded["augmented_rows"]
    assert recorded["hidden_weight"] == 1.0
    assert registry.champion_tag() == teacher  # registered, not promoted
