"""Training and evaluation across processes (CPU, gloo): 2 ranks == 1 process at the same global
batch; AAR masks agree on every rank; resume under DDP; sharded evaluation == one process.

One ``torch.multiprocessing.spawn`` of 2 ranks runs every distributed case (start-up dominates);
the one-process references run in the test process.

Why the 2-rank and 1-process weights can agree: DDP averages the ranks' gradients, i.e. the mean
of per-rank loss means, which equals the loss mean over the global batch when every sample has
the same number of response tokens: :func:`_train_set` keeps the green and blue squares, whose
answers have equal token counts (checked below). And dropout is off in those runs
(:func:`_model`): every rank draws its own dropout masks, as it should.
"""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from robustit.attacks import build_attack
from robustit.errors import CheckpointError, ConfigError
from robustit.eval.evaluate import EvalConfig, evaluate
from robustit.eval.generation import DecodingConfig
from robustit.data.batching import encode_pairs
from robustit.train.config import TrainConfig
from robustit.train.loop import slot_rows, train

from tiny import tiny_dataset, tiny_model

N_TRAIN, N_EVAL = 16, 5


def _train_set():
    """N_TRAIN samples of the two colours whose answers tokenize to the same length."""
    data = tiny_dataset(2 * N_TRAIN)
    data.samples = [s for s in data.samples if s.answer in ("a green square", "a blue square")]
    return data


def _model(dropout: bool = False):
    """The tiny model; without dropout (GPT-2's 0.1) unless asked, so layouts can be compared."""
    model = tiny_model()
    for mod in model.modules():
        if isinstance(mod, torch.nn.Dropout) and not dropout:
            mod.p = 0.0
    return model


def _cfg(**kw):
    base = dict(lr=3e-3, batch_size=4, max_steps=4, max_len=48, save_every=0, log_every=1, seed=0,
                threads=1, method="robustit")
    base.update(kw)
    return TrainConfig(**base)


def _eval_cfg():
    return EvalConfig(decoding=DecodingConfig(max_new_tokens=4, batch_size=2), scorers=("BLEU", "CIDEr"))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    data, res = _train_set(), {}
    for name, params in (("aar", {"components": "aar"}), ("idr", {"components": "idr"})):
        model = _model()
        train(model, data, _cfg(method_params=params), f"{out}/{name}", progress=False)
        res[name] = (_state(model), 0)
    resume = _cfg(method_params={"components": "aar"}, save_every=2)
    for name in ("straight", "resumed"):  # the second call resumes from RUN/resume (step 2)
        model = _model(dropout=True)  # each rank's dropout stream is saved and restored
        summary = train(model, data, resume, f"{out}/resume", progress=False)
        res[name] = (_state(model), summary["resumed_from_step"])
    result, rows = evaluate(tiny_model(), tiny_dataset(N_EVAL, name="test"), _eval_cfg(),
                            [build_attack("badnet")], progress=False)
    res["eval"] = (result, rows)
    torch.save(res, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of 2 spawned ranks produced (see _worker), and the run folder."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)], out


def _assert_close(a, b, what):
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5, rtol=1e-4), f"{what}: {k}"


def test_equal_response_lengths_precondition():
    model, data = tiny_model(), _train_set()
    enc = encode_pairs(model.tokenizer, model.template, [s.instruction for s in data.samples],
                       [s.answer for s in data.samples], 48)
    assert len(set((enc["labels"] != -100).sum(1).tolist())) == 1


def test_two_ranks_train_like_one_process_and_agree_on_the_aar_mask(ranks, tmp_path):
    (r0, r1), out = ranks
    one = _model()
    train(one, _train_set(), _cfg(method_params={"components": "aar"}, batch_size=8),
          tmp_path, progress=False)
    for key in r0["aar"][0]:  # DDP keeps the ranks bit-identical, masks included
        assert torch.equal(r0["aar"][0][key], r1["aar"][0][key]), key
    _assert_close(r0["aar"][0], _state(one), "2 ranks x 4 vs 1 process x 8")
    assert torch.equal(r0["aar"][0]["channel_masks.perceiver.mask"], one.channel_masks["perceiver"].mask)
    assert int(r0["aar"][0]["channel_masks.perceiver.steps"]) == 4
    summary = json.loads((out / "aar" / "train.json").read_text())
    assert summary["scale"] | {"device": None} == {
        "world_size": 2, "per_rank_batch": 4, "grad_accum": 1, "global_batch": 8,
        "mixed_precision": "no", "distributed_type": "MULTI_CPU", "device": None}
    log = (out / "aar" / "logs" / "loss.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in log] == [0, 1, 2, 3]  # rank 0 alone logs


def test_resume_under_ddp_continues_exactly(ranks):
    (r0, r1), out = ranks
    for r in (r0, r1):
        state, start = r["resumed"]
        assert start == 2
        for key, value in r["straight"][0].items():
            assert torch.equal(state[key], value), key
    log = (out / "resume" / "logs" / "loss.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in log] == [0, 1, 2, 3, 2, 3]


def test_idr_views_follow_the_samples_across_ranks_and_micro_batches(ranks, tmp_path):
    """2 ranks x 4 and 1 process x 4 x grad_accum 2: the same samples fill the same global-batch
    slots, whose augmentation generators are seeded by slot, so even IDR's views agree."""
    (r0, _), _ = ranks
    one = _model()
    summary = train(one, _train_set(), _cfg(method_params={"components": "idr"}, grad_accum=2),
                    tmp_path, progress=False)
    assert summary["scale"]["global_batch"] == 8
    _assert_close(r0["idr"][0], _state(one), "2 ranks vs grad_accum 2")


def test_sharded_eval_gives_the_one_process_result(ranks):
    (r0, r1), _ = ranks
    assert r1["eval"] == (None, [])
    result, rows = r0["eval"]
    ref, ref_rows = evaluate(tiny_model(), tiny_dataset(N_EVAL, name="test"), _eval_cfg(),
                             [build_attack("badnet")], progress=False)
    assert rows == ref_rows
    drop = ("seconds", "provenance", "metric_seconds")
    assert ({k: v for k, v in result.items() if k not in drop}
            == {k: v for k, v in ref.items() if k not in drop})


def test_grad_accum_equals_the_large_batch_on_one_process(tmp_path):
    data = _train_set()
    a, b = _model(), _model()
    train(a, data, _cfg(method="vanilla", batch_size=8), tmp_path / "a", progress=False)
    train(b, data, _cfg(method="vanilla", grad_accum=2), tmp_path / "b", progress=False)
    _assert_close(_state(a), _state(b), "batch 8 vs 4 x accumulation 2")


def test_last_short_global_batch_is_split_evenly():
    block = list(range(10))
    assert slot_rows(block, 0, 1, 16) == block                      # one process: as always
    assert [slot_rows(block, s, 2, 8) for s in range(2)] == [block[:5], block[5:]]
    assert slot_rows([7], 1, 2, 8) == [7]                           # no rank left empty


def test_bf16_on_cpu_trains_and_fp16_on_cpu_is_refused(tmp_path):
    model = tiny_model()
    summary = train(model, tiny_dataset(8), _cfg(method="vanilla", batch_size=8, max_steps=2,
                                                 mixed_precision="bf16"), tmp_path / "bf16", progress=False)
    assert summary["scale"]["mixed_precision"] == "bf16"
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        train(tiny_model(), tiny_dataset(8), _cfg(mixed_precision="fp16"), tmp_path / "fp16", progress=False)


def test_resume_with_another_global_batch_is_refused(tmp_path):
    data = _train_set()
    train(tiny_model(), data, _cfg(method="vanilla", save_every=2), tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="global batch of 4"):
        train(tiny_model(), data, _cfg(method="vanilla", grad_accum=2), tmp_path, progress=False)
