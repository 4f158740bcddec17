"""AAR: channel statistics maths, ChannelMask state, hooks, and the all-reduce across ranks."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from robustit.defenses.aar import (
    AARConfig,
    activation_statistics,
    make_channel_mask,
    make_channel_masks,
    mask_summary,
)
from robustit.errors import CheckpointError, ConfigError
from robustit.models.masks import (
    ChannelMask,
    batch_importance,
    channel_mask_hooks,
    keep_count,
    momentum_update,
    paused_tracking,
    topk_mask,
)

torch.set_num_threads(1)

# (B=2, T=1, N=2, D=4): channel means of |x| are 2.5, 1.0, 0.5, 4.0
TOY = torch.tensor([[[[1.0, -1.0, 0.0, 4.0], [2.0, 1.0, -1.0, -4.0]]],
                    [[[-3.0, 1.0, 0.5, 4.0], [4.0, -1.0, 0.5, 4.0]]]])


def test_batch_importance_hand_computed():
    b = batch_importance(TOY)
    assert b.shape == (4,)
    assert torch.equal(b, torch.tensor([-2.5, -1.0, -0.5, -4.0]))
    assert torch.equal(activation_statistics(TOY), torch.tensor([2.5, 1.0, 0.5, 4.0]))


def test_momentum_over_three_steps_and_topk():
    b1 = torch.tensor([-1.0, -2.0, -3.0, -4.0])
    b2 = torch.tensor([-4.0, -3.0, -2.0, -1.0])
    b3 = torch.tensor([-4.0, -4.0, -0.0, -2.0])
    g = torch.zeros(4)
    g = momentum_update(g, b1, 0.5)        # literal Eq. 10 with g^0 = 0
    assert torch.allclose(g, torch.tensor([-0.5, -1.0, -1.5, -2.0]))
    g = momentum_update(g, b2, 0.5)
    assert torch.allclose(g, torch.tensor([-2.25, -2.0, -1.75, -1.5]))
    g = momentum_update(g, b3, 0.5)
    assert torch.allclose(g, torch.tensor([-3.125, -3.0, -0.875, -1.75]))
    assert torch.equal(topk_mask(g, 2), torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_topk_ties_broken_by_lower_index():
    g = torch.tensor([1.0, 3.0, 3.0, 0.0, 3.0, 1.0])
    assert torch.equal(topk_mask(g, 2), torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0, 0.0]))
    assert torch.equal(topk_mask(g, 4), torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0]))
    assert torch.equal(topk_mask(torch.zeros(5), 3), torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0]))
    with pytest.raises(ConfigError, match="k"):
        topk_mask(g, 0)


def test_keep_count_is_floor_gamma_d():
    assert keep_count(0.5, 5) == 2
    assert keep_count(0.29, 100) == 29      # float error must not lose a channel
    assert keep_count(0.7, 10) == 7
    assert keep_count(1.0, 7) == 7
    with pytest.raises(ConfigError, match="gamma"):
        keep_count(0.1, 5)                  # floor(0.5) = 0 channels
    with pytest.raises(ConfigError, match="gamma"):
        keep_count(0.0, 5)


def test_channel_mask_tracks_in_training_and_masks():
    m = ChannelMask(4, gamma=0.5, beta=0.9)
    assert torch.equal(m.mask, torch.ones(4)) and torch.equal(m.importance, torch.zeros(4))
    m.train()
    out = m(TOY)
    # g^1 = 0.1 * b = [-0.25, -0.1, -0.05, -0.4] -> keep channels 1, 2 (least active)
    assert torch.allclose(m.importance, torch.tensor([-0.25, -0.1, -0.05, -0.4]))
    assert torch.equal(m.mask, torch.tensor([0.0, 1.0, 1.0, 0.0]))
    assert int(m.steps) == 1
    assert torch.equal(out, TOY * torch.tensor([0.0, 1.0, 1.0, 0.0]))  # masked with the new mask
    m.eval()
    before = m.importance.clone()
    assert torch.equal(m(TOY), out)                          # enabled: acts at inference
    assert torch.equal(m.importance, before) and int(m.steps) == 1  # no tracking in eval
    m.enabled.fill_(False)
    assert torch.equal(m(TOY), TOY)                          # disabled: identity at inference
    m.train()
    m.tracking = False
    assert torch.equal(m(TOY), out) and int(m.steps) == 1    # training always applies


def test_channel_mask_keeps_input_dtype_and_checks_width():
    m = ChannelMask(4, gamma=0.5).eval()
    y = m(TOY.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="D=4"):
        m(torch.ones(2, 5))


def test_channel_mask_validation():
    with pytest.raises(ConfigError, match="beta"):
        ChannelMask(8, beta=1.5)
    with pytest.raises(ConfigError, match="gamma"):
        ChannelMask(8, gamma=0.0)
    with pytest.raises(ConfigError, match="gamma"):
        ChannelMask(3, gamma=0.2)
    with pytest.raises(ConfigError, match="width"):
        ChannelMask(0)


def test_state_dict_round_trip_and_wrong_width():
    m = ChannelMask(4, gamma=0.5, beta=0.5, enabled=False).train()
    m(TOY)
    m(TOY * 2)
    state = m.state_dict()
    assert set(state) == {"mask", "importance", "steps", "enabled"}
    fresh = ChannelMask(4, gamma=0.5, beta=0.5)
    fresh.load_state_dict(state)
    for key in state:
        assert torch.equal(fresh.state_dict()[key], state[key])
    assert not bool(fresh.enabled)
    wide = nn.ModuleDict({"perceiver": ChannelMask(6, gamma=0.5)})
    with pytest.raises(CheckpointError, match="expected width 6"):
        wide.load_state_dict({f"perceiver.{k}": v for k, v in state.items()})


def test_set_mask_and_kept_channels():
    m = ChannelMask(5, gamma=0.6)
    m.set_mask(torch.tensor([True, False, True, False, False]))
    assert torch.equal(m.mask, torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0]))
    assert m.kept_channels().tolist() == [0, 2]


class _TupleOut(nn.Module):
    def forward(self, x):
        return x, "extra"


def _toy_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), _TupleOut())


def test_hooks_mask_outputs_and_are_removed():
    model = _toy_model()
    mask = ChannelMask(4, gamma=0.5).eval()
    mask.set_mask(torch.tensor([1.0, 0.0, 0.0, 1.0]))
    x = torch.randn(2, 3)
    with channel_mask_hooks(model, {"0": mask, "1": ChannelMask(4, gamma=1.0).eval()}) as active:
        assert set(active) == {"0", "1"}
        out, extra = model(x)
        assert extra == "extra"
        assert torch.all(out[:, 1:3] == 0) and torch.all(out[:, [0, 3]] != 0)
    assert not model[0]._forward_hooks and not model[1]._forward_hooks
    assert torch.all(model(x)[0][:, 1:3] != 0)


def test_hooks_removed_when_body_raises():
    model = _toy_model()
    with pytest.raises(RuntimeError, match="boom"):
        with channel_mask_hooks(model, {"0": ChannelMask(4)}):
            assert len(model[0]._forward_hooks) == 1
            raise RuntimeError("boom")
    assert not model[0]._forward_hooks


def test_unknown_hook_point_lists_available():
    model = _toy_model()
    with pytest.raises(ConfigError, match="available hook points: 0, 1"):
        with channel_mask_hooks(model, {"0": ChannelMask(4), "perceiver": ChannelMask(4)},
                                available=["1", "0"]):
            pass
    assert not model[0]._forward_hooks   # nothing registered before the check


def test_only_enabled_skips_disabled_masks():
    model = _toy_model()
    with channel_mask_hooks(model, {"0": ChannelMask(4, enabled=False)}, only_enabled=True) as active:
        assert active == {} and not model[0]._forward_hooks


def test_paused_tracking_restores_flags():
    masks = make_channel_masks(AARConfig(), {"a": 4, "b": 4})
    masks.train()
    with paused_tracking(masks):
        masks["a"](TOY)
        assert int(masks["a"].steps) == 0
    assert masks["a"].tracking and masks["b"].tracking
    masks["a"](TOY)
    assert int(masks["a"].steps) == 1


def test_aar_config_and_builders():
    cfg = AARConfig(gamma=0.3, beta=0.0, apply_at_inference=False)
    m = make_channel_mask(cfg, 10)
    assert (m.k, m.beta, bool(m.enabled)) == (3, 0.0, False)
    summary = mask_summary(m)
    assert summary["kept"] == 10 and summary["k"] == 3 and summary["steps"] == 0
    for bad in (dict(gamma=0.0), dict(gamma=1.2), dict(beta=-0.1), dict(hook_point=""),
                dict(apply_at_inference="yes")):
        with pytest.raises(ConfigError):
            AARConfig(**bad)


def test_beta_zero_uses_only_current_batch_and_beta_one_never_moves():
    m0 = ChannelMask(4, gamma=0.5, beta=0.0).train()
    m0(TOY)
    m0(TOY[..., [3, 2, 1, 0]])
    assert torch.equal(m0.importance, batch_importance(TOY[..., [3, 2, 1, 0]]))
    m1 = ChannelMask(4, gamma=0.5, beta=1.0).train()
    m1(TOY)
    assert torch.equal(m1.importance, torch.zeros(4))
    assert torch.equal(m1.mask, torch.tensor([1.0, 1.0, 0.0, 0.0]))   # ties -> lowest indices


# ----------------------------------------------------------------------------- distributed

D = 6


def _rank_data():
    """Per-rank batches for 3 steps, different batch sizes (rank 0: B=2, rank 1: B=3)."""
    gen = torch.Generator().manual_seed(123)
    scale = torch.tensor([1.0, 5.0, 2.0, 8.0, 0.5, 3.0])
    data = {r: [] for r in range(2)}
    for step in range(3):
        for rank, batch in ((0, 2), (1, 3)):
            perm = torch.randperm(D, generator=gen) if rank == 1 else torch.arange(D)
            data[rank].append(torch.randn(batch, 1, 4, D, generator=gen) * scale[perm])
    return data


def _dist_worker(rank, world, port, data, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        mask = ChannelMask(D, gamma=0.5, beta=0.6).train()
        for batch in data[rank]:
            mask(batch)
        torch.save(mask.state_dict(), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mask_identical_across_ranks_and_equal_to_global_batch(tmp_path):
    data = _rank_data()
    mp.spawn(_dist_worker, args=(2, _free_port(), data, str(tmp_path)), nprocs=2, join=True)
    s0 = torch.load(tmp_path / "rank0.pt")
    s1 = torch.load(tmp_path / "rank1.pt")
    for key in s0:
        assert torch.equal(s0[key], s1[key]), key
    ref = ChannelMask(D, gamma=0.5, beta=0.6).train()
    for a, b in zip(data[0], data[1]):
        ref(torch.cat([a, b]))          # single process over the concatenated global batch
    assert torch.allclose(s0["importance"], ref.importance, atol=1e-6)
    assert torch.equal(s0["mask"], ref.mask) and int(s0["steps"]) == 3
    # the per-rank masks alone would differ: the all-reduce mattered
    alone = ChannelMask(D, gamma=0.5, beta=0.6).train()
    for a in data[0]:
        alone(a)
    assert not torch.allclose(alone.importance, ref.importance)
