"""train/optim.py:WeightEma: the same averages and state dict as torch's AveragedModel with its EMA function,
without reading its update count on the host."""
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from train.optim import WeightEma


def test_weight_ema_equals_torch_averaged_model_bit_for_bit():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 5 * 5, 3))
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    ema = WeightEma(model, 0.9)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(4):
        model(torch.randn(5, 3, 7, 7)).logsumexp(1).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        reference.update_parameters(model)
        ema.update_parameters(model)
    expected, got = reference.state_dict(), ema.state_dict()
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    assert not torch.equal(got["module.3.weight"], model[3].weight)  # an average, not a copy


def test_a_loaded_ema_continues_averaging_rather_than_copying():
    model = torch.nn.Linear(3, 2)
    ema = WeightEma(model, 0.5)
    ema.update_parameters(model)
    resumed = WeightEma(model, 0.5)
    resumed.load_state_dict(ema.state_dict())
    assert resumed.started and int(resumed.n_averaged) == 1
    with torch.no_grad():
        model.weight.add_(2.0)
    resumed.update_parameters(model)
    torch.testing.assert_close(resumed.module.weight, model.weight - 1.0)  # halfway: averaged, not copied
