"""Metric definitions on hand-computed cases (benchmarks.md §2)."""

import pytest
import torch
from torch import nn

from backdoor.data.tensors import TensorSet, TriggeredSet
from backdoor.metrics import attack_metrics, der, evaluate, predict


def test_der_matches_the_ftsam_worked_example():
    # FT-SAM Table 1, BadNets / FT: ACC 91.82 -> 90.29, ASR 93.79 -> 1.70 gives DER 95.28.
    assert der(91.82, 93.79, 90.29, 1.70) == pytest.approx(95.28, abs=0.005)


@pytest.mark.parametrize("before,after,expected", [
    ((90, 100), (90, 0), 100.0),    # ASR 100 -> 0 at no ACC cost
    ((90, 100), (90, 100), 50.0),   # nothing changes
    ((100, 100), (0, 100), 0.0),    # ACC 100 -> 0, ASR unchanged
    ((90, 50), (95, 60), 50.0),     # gains in ACC and losses in ASR are not rewarded or penalised
    ((90, 100), (80, 0), 95.0),     # ΔACC is subtracted (BackdoorBench's non-simplified code adds it)
])
def test_der_cases(before, after, expected):
    assert der(before[0], before[1], after[0], after[1]) == pytest.approx(expected)


def test_asr_and_ra_on_hand_made_predictions():
    triggered = TriggeredSet(torch.zeros(4, 1, 2, 2, dtype=torch.uint8),
                             y_true=torch.tensor([1, 2, 3, 4]), y_target=torch.tensor([0, 0, 0, 0]))
    scores = attack_metrics(torch.tensor([0, 0, 3, 5]), triggered)
    assert scores == {"asr": 50.0, "ra": 25.0}


class Constant(nn.Module):
    """Predicts label = the value of the first pixel (0 or 1), whatever else the image holds."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        first = x[:, 0, 0, 0]
        return torch.stack([1 - first, first, torch.zeros_like(first)], 1) + 0 * self.dummy


def test_evaluate_acc_asr_ra_end_to_end():
    model = Constant()
    x = torch.zeros(5, 1, 2, 2, dtype=torch.uint8)
    x[:3, 0, 0, 0] = 255  # predicted 1
    clean = TensorSet(x, torch.tensor([1, 1, 0, 0, 2]))  # predictions 1 1 1 0 0: 3 of 5 right
    triggered = TriggeredSet(x[:4], y_true=torch.tensor([1, 2, 2, 3]), y_target=torch.tensor([0, 0, 0, 0]))
    scores = evaluate(model, clean, triggered)
    assert scores["acc"] == pytest.approx(60.0)
    assert scores["asr"] == pytest.approx(25.0)  # only the 4th is predicted 0
    assert scores["ra"] == pytest.approx(25.0)  # only the 1st keeps its label
    assert predict(model, x, batch_size=2).tolist() == [1, 1, 1, 0, 0]
