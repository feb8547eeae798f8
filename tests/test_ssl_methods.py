"""Method internals: heads, EMA updates, MoCo queue, DINO schedules and last-layer freeze, registry, LARS."""
from __future__ import annotations

import math

import pytest
import timm
import torch

from sslsearch.errors import UnknownNameError
from sslsearch.ssl.config import TrainConfig, from_flat
from sslsearch.ssl.heads import DINOHead, ProjectionHead
from sslsearch.ssl.methods import METHODS, DINO, MoCo, get_method, short_run_momentum, update_momentum
from sslsearch.ssl.optimizers import LARS
from sslsearch.ssl.schedules import StepContext, TrainingPlan, cosine, linear_ramp, warmup_cosine


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: tiny models gain nothing from two, and on a busy shared box two stall each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def plan(total: int = 100, per_epoch: int = 10) -> TrainingPlan:
    return TrainingPlan(total_steps=total, steps_per_epoch=per_epoch, warmup_steps=10, dataset_size=80,
                        global_batch_size=8)


def tiny_backbone() -> tuple[torch.nn.Module, int]:
    module = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    return module, module.num_features


def test_registry_and_unknown_method() -> None:
    assert set(METHODS) >= {"simclr", "moco", "dino"}
    assert get_method("dino") is DINO
    with pytest.raises(UnknownNameError, match="did you mean 'moco'"):
        get_method("mocco")


def test_projection_head_shapes() -> None:
    head = ProjectionHead(32, 64, 16, batch_norm=True)
    assert head(torch.randn(5, 32)).shape == (5, 16)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in head.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in ProjectionHead(32, 64, 16, batch_norm=False).modules())


def test_dino_head_last_layer_is_weight_normalised() -> None:
    head = DINOHead(32, 50, hidden_dim=64, bottleneck_dim=16, norm_last_layer=True)
    with torch.no_grad():
        head.last_layer.parametrizations.weight.original1.mul_(7.0)  # scale v: the effective weight must not change
    rows = head.last_layer.weight.norm(dim=1)
    torch.testing.assert_close(rows, torch.ones(50))
    assert not head.last_layer.parametrizations.weight.original0.requires_grad
    assert head(torch.randn(4, 32)).shape == (4, 50)
    features = torch.randn(4, 32)
    torch.testing.assert_close(head.bottleneck(features).norm(dim=1), torch.ones(4))


def test_update_momentum_is_an_ema() -> None:
    target, source = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    expected = 0.9 * target.weight.detach().clone() + 0.1 * source.weight.detach()
    update_momentum(target, source, 0.9)
    torch.testing.assert_close(target.weight.detach(), expected)


def test_short_run_momentum() -> None:
    assert short_run_momentum(0.996, 125_000) == 0.996
    assert short_run_momentum(0.996, 200) == pytest.approx(0.95)
    assert short_run_momentum(0.996, 40) == pytest.approx(0.9)  # the floor


def test_schedules() -> None:
    assert warmup_cosine(0, 100, 1.0, 0.0, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 1.0, 0.0, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 1.0, 0.0, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 1.0, 0.0, 10) == pytest.approx(0.5)
    assert cosine(50, 100, 0.0, 1.0) == pytest.approx(0.5)
    assert linear_ramp(5, 10, 0.04, 0.07) == pytest.approx(0.055)
    assert linear_ramp(20, 10, 0.04, 0.07) == 0.07


def test_moco_queue_wraps_around_and_size_is_capped() -> None:
    config = from_flat({"method": "moco", "moco.queue_size": 10, "moco.projection_dim": 4}, TrainConfig())
    backbone, dim = tiny_backbone()
    method = MoCo(backbone, dim, config)
    keys = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    method._enqueue(keys)
    method._enqueue(keys * -1)
    assert int(method.queue_pointer) == 2
    torch.testing.assert_close(method.queue[:2], -keys[4:])
    torch.testing.assert_close(method.queue[2:6], keys[2:6])
    torch.testing.assert_close(method.queue[6:10], -keys[:4])
    resolved = MoCo.resolve_config(from_flat({"moco.queue_size": 4096}, TrainConfig()), dataset_size=1000,
                                   global_batch_size=64)
    assert resolved.moco.queue_size == 448  # ≤ half the data, a multiple of the batch


def test_moco_step_updates_keys_by_momentum_only() -> None:
    config = from_flat({"method": "moco", "moco.queue_size": 16}, TrainConfig())
    backbone, dim = tiny_backbone()
    method = MoCo(backbone, dim, config)
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    ctx = StepContext(0, plan())
    output = method(views, ctx)
    output.loss.backward()
    assert all(p.grad is None for p in method.key_backbone.parameters())
    assert int(method.queue_pointer) == 4
    before = [p.detach().clone() for p in method.key_head.parameters()]
    with torch.no_grad():
        for p in method.head.parameters():
            p.add_(1.0)
    method.on_step_end(ctx)
    m = method.momentum(ctx)
    for old, new, student in zip(before, method.key_head.parameters(), method.head.parameters()):
        torch.testing.assert_close(new, m * old + (1 - m) * student.detach())


def test_moco_batch_negatives_add_the_other_images_keys_only() -> None:
    """Extra negatives can only raise InfoNCE; by hand: each query's denominator holds the queue and the
    keys of the other three images (both views), never its own image's keys."""
    import dataclasses

    from sslsearch.ssl.losses import info_nce_loss

    config = from_flat({"method": "moco", "moco.queue_size": 8, "moco.batch_norm_splits": 1,
                        "moco.batch_negatives": False}, TrainConfig())
    backbone, dim = tiny_backbone()
    method = MoCo(backbone, dim, config).eval()  # eval: batch norm does not depend on the batch make-up
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    ctx = StepContext(0, plan())
    queue = method.queue.clone()
    with torch.no_grad():
        plain = float(method(views, ctx).loss)
        method.queue.copy_(queue)
        method.section = dataclasses.replace(method.section, batch_negatives=True)
        extra = float(method(views, ctx).loss)
        q_1, q_2 = method.head(method.backbone(torch.cat(views))).chunk(2)
        keys = method.key_head(method.key_backbone(torch.cat(views)))
        k_1, k_2 = keys.chunk(2)
        others = [torch.cat([keys[[j for j in range(8) if j % 4 != i]], queue]) for i in range(4)]
        temperature = method.section.temperature
        by_hand = sum(float(info_nce_loss(q[i:i + 1], k[i:i + 1], others[i], temperature))
                      for q, k in ((q_1, k_2), (q_2, k_1)) for i in range(4)) / 8
    assert extra > plain
    assert extra == pytest.approx(by_hand, rel=1e-4)


def test_dino_freezes_the_last_layer_and_schedules_the_teacher() -> None:
    config = from_flat({"method": "dino", "dino.prototypes": 32, "dino.hidden_dim": 32, "dino.bottleneck_dim": 16,
                        "dino.teacher_temperature": 0.07,
                        "dino.freeze_last_layer_epochs": 1}, TrainConfig())
    backbone, dim = tiny_backbone()
    method = DINO(backbone, dim, config)
    views = [torch.randn(4, 3, 32, 32)] * 2 + [torch.randn(4, 3, 32, 32)]
    the_plan = plan(total=100, per_epoch=10)
    for step, frozen in ((0, True), (9, True), (10, False)):
        ctx = StepContext(step, the_plan)
        method.zero_grad()
        output = method(views, ctx)
        output.loss.backward()
        method.before_optimizer_step(ctx)
        grad = method.head.last_layer.parametrizations.weight.original1.grad
        assert (grad is None) == frozen
    assert method.teacher_temperature(StepContext(0, the_plan)) == pytest.approx(0.04)
    assert method.teacher_temperature(StepContext(15, the_plan)) == pytest.approx(0.055)
    assert method.teacher_temperature(StepContext(90, the_plan)) == pytest.approx(0.07)
    assert method.teacher_momentum(StepContext(100, the_plan)) == pytest.approx(1.0)
    assert output.logs["log_prototypes"] == pytest.approx(math.log(32))
    assert method.export_backbone() is method.teacher_backbone


def test_dino_sinkhorn_centering_leaves_the_center_alone_and_balances_the_teacher() -> None:
    config = from_flat({"method": "dino", "dino.prototypes": 8, "dino.hidden_dim": 32, "dino.bottleneck_dim": 16,
                        "dino.centering": "sinkhorn"}, TrainConfig())
    backbone, dim = tiny_backbone()
    method = DINO(backbone, dim, config)
    views = [torch.randn(16, 3, 32, 32), torch.randn(16, 3, 32, 32)]
    output = method(views, StepContext(0, plan()))
    output.loss.backward()
    assert torch.count_nonzero(method.loss.center) == 0
    # 32 teacher outputs spread over the 8 prototypes: the batch-mean distribution is close to uniform
    assert float(output.logs["teacher_mean_entropy"]) > 0.95 * math.log(8)


def test_dino_koleo_adds_the_weighted_regulariser_of_each_global_crop() -> None:
    """loss = DINO loss + w · mean over the two global crops of KoLeo on the student's backbone features."""
    from sslsearch.ssl.losses import koleo_loss

    flat = {"method": "dino", "dino.prototypes": 8, "dino.hidden_dim": 32, "dino.bottleneck_dim": 16}
    views = [torch.randn(6, 3, 32, 32), torch.randn(6, 3, 32, 32)]
    torch.manual_seed(0)
    backbone, dim = tiny_backbone()
    plain = DINO(backbone, dim, from_flat(flat, TrainConfig()))
    with_koleo = DINO(backbone, dim, from_flat(flat | {"dino.koleo_weight": 0.5}, TrainConfig()))
    with_koleo.load_state_dict(plain.state_dict())
    ctx = StepContext(0, plan())
    base = plain(views, ctx)
    output = with_koleo(views, ctx)
    assert "koleo_loss" not in base.logs
    with torch.no_grad():
        features = with_koleo.backbone(torch.cat(views))
    expected_koleo = (koleo_loss(features[:6]) + koleo_loss(features[6:])) / 2
    torch.testing.assert_close(output.logs["koleo_loss"], expected_koleo, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(output.logs["dino_loss"], base.loss.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(output.loss.detach(), base.loss.detach() + 0.5 * expected_koleo, rtol=1e-4, atol=1e-5)
    output.loss.backward()
    assert all(p.grad is not None for p in with_koleo.backbone.parameters() if p.requires_grad)


def test_lars_scales_updates_by_the_trust_ratio() -> None:
    weight = torch.nn.Parameter(torch.full((2, 2), 2.0))  # ‖w‖ = 4
    bias = torch.nn.Parameter(torch.ones(2))
    optimizer = LARS([{"params": [weight]}, {"params": [bias], "lars_exclude": True}], lr=1.0, momentum=0.0,
                     trust_coefficient=0.1)
    weight.grad = torch.full((2, 2), 0.5)  # ‖g‖ = 1 → trust ratio 0.1 · 4 / 1 = 0.4
    bias.grad = torch.full((2,), 0.5)
    optimizer.step()
    torch.testing.assert_close(weight.detach(), torch.full((2, 2), 2.0 - 0.4 * 0.5))
    torch.testing.assert_close(bias.detach(), torch.full((2,), 0.5))


def test_replanning_moves_no_schedule_back_and_each_still_ends_at_its_final_value() -> None:
    from sslsearch.ssl.plan import replan

    config = from_flat({"method": "dino", "dino.prototypes": 32, "dino.hidden_dim": 32, "dino.bottleneck_dim": 16,
                        "dino.teacher_temperature": 0.07, "moco.queue_size": 16}, TrainConfig())
    dino = DINO(*tiny_backbone(), config)
    moco = MoCo(*tiny_backbone(), from_flat({"method": "moco", "moco.queue_size": 16}, TrainConfig()))
    schedules = {"teacher temperature": dino.teacher_temperature, "teacher momentum": dino.teacher_momentum,
                 "moco momentum": moco.momentum,
                 "lr": lambda ctx: warmup_cosine(ctx.schedule_step, ctx.plan.total_steps, 1.0, 0.0,
                                                 ctx.plan.warmup_steps)}
    first = plan(total=100)
    for step, total in ((8, 400), (20, 60)):  # re-planned during the warm-ups, to more and to fewer steps
        later = replan(first, step=step, total_steps=total, warmup_fraction=0.1)
        for name, schedule in schedules.items():
            values = [schedule(StepContext(s, first)) for s in range(step + 1)]
            values += [schedule(StepContext(s, later)) for s in range(step + 1, total + 1)]
            steps = [abs(b - a) for a, b in zip(values, values[1:])]
            # no jump at the re-plan: its step is no bigger than the largest step of the schedule elsewhere
            assert steps[step] <= max(steps[:step] + steps[step + 1:]) * 1.5 + 1e-12, name
            assert values[-1] == pytest.approx(schedule(StepContext(100, first))), name  # the same final value
    assert dino.freeze_last_layer_steps(StepContext(0, replan(first, step=5, total_steps=400,
                                                              warmup_fraction=0.1))) == 10  # an epoch: real steps
