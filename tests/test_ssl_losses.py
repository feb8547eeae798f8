"""Losses against hand-written references (float64 loops over the definitions in the papers)."""
from __future__ import annotations

import math

import pytest
import torch

from sslsearch.ssl.losses import DINOLoss, info_nce_loss, koleo_loss, nt_xent_loss
from sslsearch.ssl.losses.dino import sinkhorn_knopp


def reference_nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> float:
    """SimCLR eq. 1, literally: 2N views, positive = the other view, denominator over all k ≠ i."""
    z = torch.cat([z_a, z_b]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n = z_a.shape[0]
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        numerator = math.exp(float(z[i] @ z[j]) / temperature)
        denominator = sum(math.exp(float(z[i] @ z[k]) / temperature) for k in range(2 * n) if k != i)
        total += -math.log(numerator / denominator)
    return total / (2 * n)


def reference_info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> float:
    q, k, queue = (t.double() / t.double().norm(dim=1, keepdim=True) for t in (q, k, queue))
    total = 0.0
    for i in range(q.shape[0]):
        positive = math.exp(float(q[i] @ k[i]) / temperature)
        negatives = sum(math.exp(float(q[i] @ queue[m]) / temperature) for m in range(queue.shape[0]))
        total += -math.log(positive / (positive + negatives))
    return total / q.shape[0]


def reference_dino(student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor,
                   student_temperature: float, teacher_temperature: float) -> float:
    """DINO algorithm 1: H(t, s) = -Σ softmax((t - C)/τt) · log softmax(s/τs), over pairs of different crops."""
    total, pairs = 0.0, 0
    for v, t in enumerate(teacher):
        for u, s in enumerate(student):
            if u == v:
                continue
            for row in range(t.shape[0]):
                logits_t = (t[row].double() - center[0].double()) / teacher_temperature
                p_t = torch.exp(logits_t - logits_t.max())
                p_t = p_t / p_t.sum()
                logits_s = s[row].double() / student_temperature
                log_p_s = logits_s - logits_s.max() - torch.log(torch.exp(logits_s - logits_s.max()).sum())
                total += float(-(p_t * log_p_s).sum()) / t.shape[0]
            pairs += 1
    return total / pairs


@pytest.mark.parametrize("temperature", [0.07, 0.2, 0.5, 1.0])
@pytest.mark.parametrize("batch", [2, 5])
def test_nt_xent_matches_reference(temperature: float, batch: int) -> None:
    generator = torch.Generator().manual_seed(batch)
    z_a, z_b = torch.randn(batch, 16, generator=generator), torch.randn(batch, 16, generator=generator)
    assert float(nt_xent_loss(z_a, z_b, temperature)) == pytest.approx(reference_nt_xent(z_a, z_b, temperature),
                                                                        rel=1e-5)


def test_nt_xent_is_symmetric_and_scale_invariant() -> None:
    z_a, z_b = torch.randn(6, 8), torch.randn(6, 8)
    assert float(nt_xent_loss(z_a, z_b)) == pytest.approx(float(nt_xent_loss(z_b, z_a)), rel=1e-6)
    assert float(nt_xent_loss(3 * z_a, z_b)) == pytest.approx(float(nt_xent_loss(z_a, z_b)), rel=1e-5)


def test_nt_xent_gradient_matches_reference_autograd() -> None:
    z_a = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    z_b = torch.randn(4, 8, dtype=torch.float64)

    def literal(a: torch.Tensor) -> torch.Tensor:
        z = torch.nn.functional.normalize(torch.cat([a, z_b]), dim=1)
        sim = z @ z.T / 0.3
        n = a.shape[0]
        losses = []
        for i in range(2 * n):
            mask = torch.ones(2 * n, dtype=torch.bool)
            mask[i] = False
            losses.append(-(sim[i, (i + n) % (2 * n)] - torch.logsumexp(sim[i][mask], dim=0)))
        return torch.stack(losses).mean()

    (expected,) = torch.autograd.grad(literal(z_a), z_a)
    (actual,) = torch.autograd.grad(nt_xent_loss(z_a, z_b, 0.3), z_a)
    torch.testing.assert_close(actual.double(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("temperature", [0.1, 0.2])
def test_info_nce_matches_reference(temperature: float) -> None:
    generator = torch.Generator().manual_seed(3)
    q, k, queue = (torch.randn(n, 12, generator=generator) for n in (4, 4, 7))
    assert float(info_nce_loss(q, k, queue, temperature)) == pytest.approx(
        reference_info_nce(q, k, queue, temperature), rel=1e-5)


def test_info_nce_prefers_the_right_key() -> None:
    q = torch.randn(8, 16)
    queue = torch.randn(32, 16)
    assert float(info_nce_loss(q, q, queue)) < float(info_nce_loss(q, torch.randn(8, 16), queue))


@pytest.mark.parametrize("crops", [2, 4])
def test_dino_loss_matches_reference(crops: int) -> None:
    generator = torch.Generator().manual_seed(crops)
    batch, prototypes = 3, 10
    loss = DINOLoss(prototypes, center_momentum=0.9)
    loss.center.copy_(torch.randn(1, prototypes, generator=generator))
    student = torch.randn(crops * batch, prototypes, generator=generator)
    teacher = torch.randn(2 * batch, prototypes, generator=generator)
    value = loss(student, teacher, student_temperature=0.1, teacher_temperature=0.04)
    expected = reference_dino(list(student.chunk(crops)), list(teacher.chunk(2)), loss.center, 0.1, 0.04)
    assert float(value) == pytest.approx(expected, rel=1e-5)


def test_dino_center_update_is_an_ema_of_the_batch_mean() -> None:
    loss = DINOLoss(4, center_momentum=0.9)
    teacher = torch.arange(8, dtype=torch.float32).reshape(2, 4)
    loss.update_center(teacher)
    torch.testing.assert_close(loss.center, 0.1 * teacher.mean(0, keepdim=True))
    loss.update_center(teacher)
    torch.testing.assert_close(loss.center, (0.09 + 0.1) * teacher.mean(0, keepdim=True))


def test_dino_loss_gradient_flows_to_student_only() -> None:
    loss = DINOLoss(6)
    student = torch.randn(8, 6, requires_grad=True)
    teacher = torch.randn(4, 6, requires_grad=True)
    loss(student, teacher, student_temperature=0.1, teacher_temperature=0.04).backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0
    assert teacher.grad is None


def test_dino_uniform_student_and_teacher_give_log_k() -> None:
    loss = DINOLoss(50)
    value = loss(torch.zeros(8, 50), torch.zeros(4, 50), student_temperature=0.1, teacher_temperature=0.04)
    assert float(value) == pytest.approx(math.log(50), rel=1e-6)


def reference_sinkhorn(scores: torch.Tensor, iterations: int) -> torch.Tensor:
    """SwAV's Algorithm (arXiv:2006.09882, appendix A.1), in float64 loops: Q = exp(scores)ᵀ, then
    alternately make each prototype row sum to 1/K and each sample column sum to 1/n; rows of n·Qᵀ."""
    q = torch.exp(scores.double()).T.clone()
    k, n = q.shape
    q /= q.sum()
    for _ in range(iterations):
        for row in range(k):
            q[row] /= q[row].sum() * k
        for column in range(n):
            q[:, column] /= q[:, column].sum() * n
    return (q * n).T


def test_sinkhorn_matches_reference_and_balances_prototypes() -> None:
    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(12, 5, generator=generator) * 4
    assignments = sinkhorn_knopp(scores, iterations=3)
    torch.testing.assert_close(assignments.double(), reference_sinkhorn(scores, 3), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(assignments.sum(dim=1), torch.ones(12))
    # more rounds: every prototype holds n / K of the mass
    balanced = sinkhorn_knopp(scores, iterations=50)
    torch.testing.assert_close(balanced.sum(dim=0), torch.full((5,), 12 / 5), rtol=1e-3, atol=1e-3)


def test_sinkhorn_survives_sharp_scores() -> None:
    """Logits / 0.02 span ±50: exp must not overflow, and near-identical rows still get spread out."""
    scores = torch.randn(64, 32, generator=torch.Generator().manual_seed(0)) * 50
    assignments = sinkhorn_knopp(scores)
    assert torch.isfinite(assignments).all()
    torch.testing.assert_close(assignments.sum(dim=1), torch.ones(64))


def test_dino_sinkhorn_centering_cannot_collapse_to_one_prototype() -> None:
    """Every teacher output prefers prototype 0 (the one-prototype collapse): mean centering at the start
    (center 0) follows it, Sinkhorn spreads the batch over all prototypes."""
    teacher = torch.zeros(16, 8)
    teacher[:, 0] = 1.0
    teacher += 0.01 * torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
    mean = DINOLoss(8).teacher_probabilities(teacher, 0.04)
    sinkhorn = DINOLoss(8, centering="sinkhorn").teacher_probabilities(teacher, 0.04)
    assert float(mean[:, 0].mean()) > 0.99
    assert float(sinkhorn.mean(dim=0).max()) < 0.3  # no prototype takes much more than 1/8 of the batch
    torch.testing.assert_close(sinkhorn.sum(dim=1), torch.ones(16))


def test_dino_loss_rejects_unknown_centering() -> None:
    with pytest.raises(ValueError, match="sinkhorn"):
        DINOLoss(8, centering="median")


def test_info_nce_with_batch_keys_matches_reference() -> None:
    """Query i's denominator: its positive, the queue, and this step's keys of the *other* images."""
    generator = torch.Generator().manual_seed(5)
    batch, views, dim = 4, 2, 8
    q = torch.randn(batch, dim, generator=generator)
    keys = torch.randn(views * batch, dim, generator=generator)  # view-major: key j is image j % batch
    queue = torch.randn(6, dim, generator=generator)
    positive_keys = keys[batch:]  # view 2's keys are the positives of view 1's queries
    excluded = (torch.arange(views * batch) % batch)[None, :] == torch.arange(batch)[:, None]
    value = info_nce_loss(q, positive_keys, queue, 0.2, batch_keys=keys, batch_keys_excluded=excluded)
    qn, kn, queue_n = (t.double() / t.double().norm(dim=1, keepdim=True) for t in (q, keys, queue))
    total = 0.0
    for i in range(batch):
        positive = math.exp(float(qn[i] @ kn[batch + i]) / 0.2)
        others = [j for j in range(views * batch) if j % batch != i]
        negatives = sum(math.exp(float(qn[i] @ kn[j]) / 0.2) for j in others)
        negatives += sum(math.exp(float(qn[i] @ queue_n[m]) / 0.2) for m in range(queue.shape[0]))
        total += -math.log(positive / (positive + negatives))
    assert float(value) == pytest.approx(total / batch, rel=1e-5)


def reference_koleo(x: torch.Tensor) -> float:
    """-1/n Σ_i log min_{j≠i} ||x_i/|x_i| - x_j/|x_j||| (Sablayrolles et al. 2019, eq. 7)."""
    x = x.double() / x.double().norm(dim=1, keepdim=True)
    n = x.shape[0]
    total = 0.0
    for i in range(n):
        nearest = min(float((x[i] - x[j]).norm()) for j in range(n) if j != i)
        total += -math.log(nearest)
    return total / n


@pytest.mark.parametrize("rows", [2, 3, 17])
def test_koleo_matches_reference(rows: int) -> None:
    x = torch.randn(rows, 6, generator=torch.Generator().manual_seed(rows)) * 3.0
    assert float(koleo_loss(x)) == pytest.approx(reference_koleo(x), rel=1e-5)


def test_koleo_gradient_pushes_nearest_neighbours_apart() -> None:
    """One gradient step on the rows lowers the loss and widens the closest pair's distance."""
    x = torch.tensor([[1.0, 0.0, 0.0], [0.99, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], requires_grad=True)
    loss = koleo_loss(x)
    loss.backward()
    with torch.no_grad():
        moved = x - 0.05 * x.grad
        before = (x[0] / x[0].norm() - x[1] / x[1].norm()).norm()
        after = (moved[0] / moved[0].norm() - moved[1] / moved[1].norm()).norm()
    assert float(koleo_loss(moved)) < float(loss.detach())
    assert float(after) > float(before)


def test_koleo_survives_duplicate_rows_and_refuses_one_row() -> None:
    x = torch.ones(3, 4, requires_grad=True)
    value = koleo_loss(x)
    assert math.isfinite(float(value.detach()))
    value.backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="at least 2 rows"):
        koleo_loss(torch.ones(1, 4))
