"""The trainers' AdamW: the fused kernel where it applies, the same updates as torch's default AdamW."""

import torch

from tether.trainers.common import adamw


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(7, 5, generator=g)), torch.nn.Parameter(torch.randn(5, generator=g))]


def test_fused_on_cpu_and_the_same_updates_as_the_default():
    fused_params, plain_params = _params(), _params()
    fused = adamw([{"params": fused_params[:1], "lr": 1e-2}, {"params": fused_params[1:], "lr": 3e-2}], betas=(0.9, 0.99), weight_decay=0.1)
    plain = torch.optim.AdamW([{"params": plain_params[:1], "lr": 1e-2}, {"params": plain_params[1:], "lr": 3e-2}], betas=(0.9, 0.99), weight_decay=0.1)
    assert all(g["fused"] for g in fused.param_groups) and not plain.param_groups[0]["fused"]
    for step in range(3):
        for a, b in zip(fused_params, plain_params):
            grad = torch.full_like(a, float(step + 1)) * torch.linspace(-1, 1, a.numel()).view_as(a)
            a.grad, b.grad = grad.clone(), grad.clone()
        fused.step()
        plain.step()
    for a, b, start in zip(fused_params, plain_params, _params()):
        assert (a - start).abs().min() > 1e-3  # every weight moved
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_not_fused_on_devices_without_the_kernel():
    meta = torch.nn.Parameter(torch.zeros(3, device="meta"))
    assert not adamw([meta], lr=1e-3).param_groups[0]["fused"]


def test_progress_prints_plain_lines_when_not_a_terminal(capsys):
    from tether.run import LineProgress

    with LineProgress(every=3600.0) as bar:
        task = bar.add_task("sft", total=4, completed=0, info="")
        bar.update(task, advance=1, info="loss=2.5")  # within `every`: silent
        assert capsys.readouterr().err == ""
        for _ in range(3):
            bar.update(task, advance=1, info="loss=1.5")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sft: step 4/4,") and "steps/min" in err[0] and err[0].endswith("loss=1.5")
