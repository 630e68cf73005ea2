"""training.callbacks: the weight average behind model.ema_decay."""
import pytest
import torch
from torch.optim.swa_utils import AveragedModel

from training.callbacks import _moving_average


def _average_of(values: list[float], decay: float) -> float:
    net = torch.nn.Linear(1, 1, bias=False)
    avg = AveragedModel(net, multi_avg_fn=_moving_average(decay))
    for v in values:
        net.weight.data.fill_(v)
        avg.update_parameters(net)
    return float(avg.module.weight.detach())


def test_a_short_run_is_the_plain_mean_not_the_initial_weights():
    # at 0.995 a plain moving average of 4 updates would keep ~98.5 % of the first weights
    assert abs(_average_of([0.0, 4.0, 8.0, 12.0], 0.995) - 6.0) < 1e-6


def test_a_long_run_is_the_moving_average_with_the_set_decay():
    values = [float(i % 7) for i in range(300)]
    expected = sum(values[:2]) / 2                  # the mean while n / (n + 1) < decay (n = 1 at decay 0.6)
    for v in values[2:]:
        expected = 0.6 * expected + 0.4 * v
    assert abs(_average_of(values, 0.6) - expected) < 1e-5


def test_the_average_spans_at_most_max_epochs_whatever_the_steps_per_epoch():
    from training.callbacks import EMAWeights

    ema = EMAWeights(0.995, max_epochs=3)
    assert ema.decay_for(76) == 0.995                        # Amazon Toys, 76 steps: 200 steps < 3 epochs, as set
    assert ema.decay_for(140) == 0.995                       # Amazon Sports
    assert abs(ema.decay_for(4) - (1 - 1 / 12)) < 1e-12      # 943 users in 4 steps: at most 12 steps averaged
    assert EMAWeights(0.995).decay_for(4) == 0.995           # no cap
    with pytest.raises(ValueError, match="model.ema_max_epochs"):
        EMAWeights(0.995, max_epochs=-1)
