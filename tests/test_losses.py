"""Every MMKD loss term against a slow loop-based reference written here from METHOD.md,
and both loss modes against the public MMKD code's own float64 outputs."""
import json
import math
import os

import pytest
import torch
from safetensors import safe_open

from conftest import ROOT
from losses import (LossWeights, hint_loss, gather_tokens, mmkd_loss, pixel_targets,
                    relation_loss, select_salient_tokens, topk_attention_global,
                    topk_attention_local)
from modeling_teacher import TeacherOutput
from modeling_student import Projector, StudentOutput

torch.manual_seed(0)


def ref_topk_row(logits_row, v, k, T):
    """softmax(logits/T), keep the top-k entries, renormalise, times the values."""
    p = torch.softmax(logits_row / T, dim=0)
    order = sorted(range(len(p)), key=lambda j: -p[j].item())[:k]
    z = sum(p[j].item() for j in order)
    return sum(p[j].item() / z * v[j] for j in order)


def test_topk_global_matches_loops():
    B, h, N, hd, k, T = 2, 3, 12, 4, 5, 2.0
    logits, v = torch.randn(B, h, N, N), torch.randn(B, h, N, hd)
    out = topk_attention_global(logits, v, k, T)
    assert out.shape == (B, N, h * hd)
    for b in range(B):
        for q in range(N):
            ref = torch.cat([ref_topk_row(logits[b, i, q], v[b, i], k, T) for i in range(h)])
            torch.testing.assert_close(out[b, q], ref, atol=1e-5, rtol=1e-5)


def test_topk_local_matches_loops_slice_consistent():
    B, h, S, n, hd, k = 2, 2, 3, 4, 3, 2
    N = S * n
    logits, v = torch.randn(B, h, N, N), torch.randn(B, h, N, hd)
    out = topk_attention_local(logits, v, k, S, kd_T=1.0)
    assert out.shape == (B, N, S, h * hd)
    for b in range(B):
        for q in range(N):
            for s in range(S):
                keys = slice(s * n, (s + 1) * n)  # slice s's keys with slice s's values
                ref = torch.cat([ref_topk_row(logits[b, i, q, keys], v[b, i, keys], k, 1.0)
                                 for i in range(h)])
                torch.testing.assert_close(out[b, q, s], ref, atol=1e-5, rtol=1e-5)


def test_topk_keeps_exactly_k_with_ties():
    logits = torch.zeros(1, 1, 1, 6)  # all tied
    v = torch.eye(6).reshape(1, 1, 6, 6)
    out = topk_attention_global(logits, v, 2, 1.0)
    assert (out > 0).sum() == 2 and math.isclose(out.sum().item(), 1.0, rel_tol=1e-6)


def test_hint_and_selection_match_loops():
    B, N, D, f = 3, 10, 6, 4
    zt, zs = torch.randn(B, N, D), torch.randn(B, N, D)
    idx = select_salient_tokens(zt, f)
    loss = hint_loss(gather_tokens(zs, idx), gather_tokens(zt, idx))
    total = 0.0
    for b in range(B):
        norms = [zt[b, j].abs().sum().item() for j in range(N)]
        top = sorted(range(N), key=lambda j: -norms[j])[:f]
        assert sorted(idx[b].tolist()) == sorted(top)
        total += sum(((zs[b, j] - zt[b, j]) ** 2).sum().item() for j in top)
    assert math.isclose(loss.item(), total / (B * f * D), rel_tol=1e-5)


def test_relation_matches_loops():
    B, f, Ds, Dt, ts, tt = 2, 3, 5, 7, 0.1, 0.05
    s, t = torch.randn(B, f, Ds), torch.randn(B, f, Dt)
    loss = relation_loss(s, t, ts, tt).item()
    S = [x / x.norm() for x in s.reshape(-1, Ds)]
    Tt = [x / x.norm() for x in t.reshape(-1, Dt)]
    M = len(S)
    kl = 0.0
    for i in range(M):
        others = [j for j in range(M) if j != i]  # the diagonal carries no weight
        es = [math.exp(float(S[i] @ S[j]) / ts) for j in others]
        et = [math.exp(float(Tt[i] @ Tt[j]) / tt) for j in others]
        ps, pt = [e / sum(es) for e in es], [e / sum(et) for e in et]
        kl += sum(a * math.log(a / b) for a, b in zip(pt, ps))
    assert math.isclose(loss, kl / M, rel_tol=1e-4, abs_tol=1e-6)


def test_attention_losses_zero_when_maps_equal():
    B, h, S, n, hd = 2, 2, 2, 5, 4
    logits, v = torch.randn(B, h, S * n, S * n), torch.randn(B, h, S * n, hd)
    g, loc = topk_attention_global(logits, v, 3), topk_attention_local(logits, v, 3, S)
    feats = torch.randn(B, S * n, h * hd)
    w = LossWeights.from_args("hybrid", 0.2, 0.1, 1.0, 3.0, 1.0, 0.0)
    total, terms = mmkd_loss(StudentOutput(feats, g, loc), TeacherOutput(feats, g, loc), w, num_f=3)
    assert terms["global"].item() == 0 and terms["local"].item() == 0 and terms["hint"].item() == 0
    other = StudentOutput(feats, g + 0.1, loc)
    _, terms = mmkd_loss(other, TeacherOutput(feats, g, loc), w, num_f=3)
    assert math.isclose(terms["global"].item(), 0.01, rel_tol=1e-4)


def test_weights_by_distill_mode_and_total():
    mk = lambda d: LossWeights.from_args(d, 0.2, 0.1, 2.0, 3.0, 1.0, 0.5)
    assert mk("hybrid").views() == ("global", "local")
    assert mk("hinTop").views() == ("global",) and mk("VTop").views() == ("local",)
    assert mk("onlymse").views() == ()
    w = mk("hybrid")
    assert (w.hint, w.relation, w.global_, w.local, w.pixel) == (0.2, 0.1, 6.0, 2.0, 0.5)
    with pytest.raises(ValueError, match="--distill"):
        LossWeights.from_args("nope", 1, 1, 1, 1, 1, 0)
    B, N, D = 2, 8, 4
    s = StudentOutput(torch.randn(B, N, D), torch.randn(B, N, D), torch.randn(B, N, 2, D), torch.randn(B, 3, 5))
    t = TeacherOutput(torch.randn(B, N, D), torch.randn(B, N, D), torch.randn(B, N, 2, D))
    total, terms = mmkd_loss(s, t, w, torch.randn(B, 3, 5), num_f=4)
    expect = 0.2 * terms["hint"] + 0.1 * terms["relation"] + 6 * terms["global"] + 2 * terms["local"] + 0.5 * terms["pixel"]
    assert set(terms) == {"hint", "relation", "global", "local", "pixel"}
    assert math.isclose(total.item(), expect.item(), rel_tol=1e-6)


def test_pixel_target_matches_loops():
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    B, T, H, t, p = 1, 4, 8, 2, 4
    x = torch.randn(B, 3, T, H, H)
    mask = torch.zeros(B, (T // t) * (H // p) ** 2, dtype=torch.bool)
    mask[0, [1, 5]] = True
    out = pixel_targets(x, mask, t, p, mean, std, normalize=True)
    assert out.shape == (B, 2, t * p * p * 3)
    for row, tok in enumerate([1, 5]):
        ti, rest = divmod(tok, (H // p) ** 2)
        hi, wi = divmod(rest, H // p)
        for c in range(3):
            patch = x[0, c, ti * t:(ti + 1) * t, hi * p:(hi + 1) * p, wi * p:(wi + 1) * p] * std[c] + mean[c]
            ref = (patch - patch.mean()) / (patch.std(unbiased=True) + 1e-6)
            torch.testing.assert_close(out[0, row, c::3], ref.reshape(-1), atol=1e-5, rtol=1e-5)


# --- the public MMKD code's own outputs (tests/data/mmkd_reference/README.md) -------------

REFERENCE = os.path.join(ROOT, "tests", "data", "mmkd_reference", "cases.safetensors")
TERMS = ("hint", "relation", "global", "local")


def load_case(name):
    """``(config, tensors)`` of fixture case ``name`` ('vits' or 'vitb'), float64."""
    with safe_open(REFERENCE, "pt") as f:
        cfg = json.loads(f.metadata()[f"{name}.config"])
        tensors = {k[len(name) + 1:]: f.get_tensor(k) for k in f.keys() if k.startswith(name + ".")}
    assert all(v.dtype == torch.float64 for v in tensors.values())
    return cfg, tensors


def fixture_projector(cfg, t, teacher_side=True):
    """Our :class:`Projector` holding the fixture's projector weights (None for 'vitb')."""
    if not cfg["projectors"]:
        return None
    proj = Projector(cfg["Ds"], cfg["Dt"], ("global", "local"), teacher_side=teacher_side).double()
    names = {"feat.fc1": "feat_mlp.fc1", "feat.fc2": "feat_mlp.fc2",
             "attn.global": "attn_global_s", "attn.local": "attn_local_s"}
    if teacher_side:
        names.update({"attn_t.global": "attn_global_t", "attn_t.local": "attn_local_t"})
    state = {f"{ours}.{p}": t[f"{theirs}.{p}"] for ours, theirs in names.items()
             for p in ("weight", "bias")}
    assert set(state) == set(proj.state_dict())
    proj.load_state_dict(state)
    return proj


def fixture_loss(name, reference, teacher_side=True):
    """Our ``mmkd_loss`` on the fixture's inputs: ``(total, terms, config, tensors,
    projector)`` (the projector: :func:`fixture_projector`'s)."""
    cfg, t = load_case(name)
    k, kd_T, S = cfg["num_k"], cfg["kd_T"], cfg["S"]
    pairing = "reference" if reference else "slice"

    def views(logits, v):
        return (topk_attention_global(logits, v, k, kd_T),
                topk_attention_local(logits, v, k, S, kd_T, pairing=pairing))

    proj = fixture_projector(cfg, t, teacher_side)
    student = StudentOutput(t["z_s"], *views(t["logits_s"], t["v_s"]), projector=proj)
    teacher = TeacherOutput(t["z_t"], *views(t["logits_t"], t["v_t"]))
    w = cfg["weights"]
    weights = LossWeights.from_args("hybrid", w["gamma"], w["alpha"], w["beta"], w["beta_kd1"],
                                    w["beta_kd2"], 0.0)
    total, terms = mmkd_loss(student, teacher, weights, temperature_s=cfg["temperature_s"],
                             temperature_t=cfg["temperature_t"], num_f=cfg["num_f"],
                             reference=reference)
    assert total.dtype == torch.float64 and all(v.dtype == torch.float64 for v in terms.values())
    return total, terms, cfg, t, proj


def close(a, b, rel=1e-6):
    return math.isclose(float(torch.as_tensor(a).detach()), float(torch.as_tensor(b).detach()),
                        rel_tol=rel)


@pytest.mark.parametrize("name", ["vits", "vitb"])
def test_reference_mode_reproduces_the_public_code(name):
    total, terms, cfg, t, _ = fixture_loss(name, reference=True)
    expect = {"hint": t["hint"], "relation": t["relation"], "global": t["global"],
              "local": t["local_published"]}
    for term in TERMS:
        assert close(terms[term], expect[term]), (term, float(terms[term]), float(expect[term]))
    assert close(total, t["total"]), (float(total), float(t["total"]))
    if name == "vits":  # the intermediate the reference hands its student-side projector
        torch.testing.assert_close(topk_attention_global(t["logits_s"], t["v_s"], cfg["num_k"]),
                                   t["global_attn_s"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["vits", "vitb"])
def test_default_mode_against_the_public_code(name):
    """Relation and global as the public code (same projections); local as its slice-fixed
    VTop; hint over the selected tokens only, which drops the reference's |Mlp(0)|^2 term."""
    total, terms, cfg, t, proj = fixture_loss(name, reference=False)
    for term, key in (("relation", "relation"), ("global", "global"), ("local", "local_fixed")):
        assert close(terms[term], t[key]), (term, float(terms[term]), float(t[key]))
    z_s, z_t, f = t["z_s"], t["z_t"], cfg["num_f"]
    feat = proj.feat if proj is not None else (lambda x: x)
    B, N, D_t = z_t.shape
    hint = 0.0
    for b in range(B):  # the num_f tokens of largest teacher L1 norm, by loop
        top = sorted(range(N), key=lambda i: -z_t[b, i].abs().sum().item())[:f]
        hint += sum(((feat(z_s[b, i]) - z_t[b, i]) ** 2).sum().item() for i in top)
    hint /= B * f * D_t
    assert close(terms["hint"], hint)
    zero = (feat(torch.zeros(cfg["Ds"], dtype=torch.float64)) ** 2).sum().item()
    assert close(t["hint"] - terms["hint"], (N - f) * zero / (f * D_t))  # 0 without projector
    gamma = cfg["weights"]["gamma"]
    assert close(total, t["total_local_fixed"] - gamma * (t["hint"] - terms["hint"]))


@pytest.mark.parametrize("name", ["vits", "vitb"])
def test_default_local_term_is_a_per_slice_loop(name):
    _, terms, cfg, t, proj = fixture_loss(name, reference=False)
    S, n, k = cfg["S"], cfg["n"], cfg["num_k"]

    def per_slice(logits, v):  # each slice's keys with that slice's own values
        return torch.stack([topk_attention_global(logits[..., s * n:(s + 1) * n],
                                                  v[:, :, s * n:(s + 1) * n], k)
                            for s in range(S)], dim=2)  # [B, N, S, h * hd]

    loc_s, loc_t = per_slice(t["logits_s"], t["v_s"]), per_slice(t["logits_t"], t["v_t"])
    if proj is not None:
        loc_s, loc_t = proj.attn["local"](loc_s), proj.attn_t["local"](loc_t)
    assert close(terms["local"], ((loc_s - loc_t) ** 2).mean(), rel=1e-12)


def test_teacher_side_linear_matters_and_is_optional():
    """Without the teacher-side Linear (our default unless --teacher_proj) the ViT-S global
    term is not the public code's; the relation term never involves a projector."""
    _, with_t, _, t, _ = fixture_loss("vits", reference=False)
    _, without, *_ = fixture_loss("vits", reference=False, teacher_side=False)
    assert not close(without["global"], t["global"], rel=1e-2)
    assert close(without["relation"], with_t["relation"], rel=1e-12)
