"""Tests for thinkrl.engine.sampler.sample on tiny, randomly initialised, in-process models (no network)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from thinkrl.engine import sampler as rollout
from thinkrl.engine.sampler import SamplingParams, sample


def char_tokenizer(with_pad: bool = True) -> PreTrainedTokenizerFast:
    """Character-level tokenizer: printable ASCII + <pad>/<eos>/<unk> (98 ids; without pad, <eos> is id 0)."""
    specials = (["<pad>"] if with_pad else []) + ["<eos>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + [chr(c) for c in range(32, 127)])}
    if not with_pad:
        vocab["<pad_unused>"] = len(vocab)  # keep the vocab size at 98
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    kw = {"pad_token": "<pad>"} if with_pad else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>", **kw)


TOK = char_tokenizer()
V = len(TOK)  # 98


def enc(text: str, tok: PreTrainedTokenizerFast = TOK) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def random_norms(model):
    """RMSNorm weights away from their initial ones, so that the lean decoder's folding of them
    into the next product is exercised."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    return model


def tiny_llama(hidden: int = 64, init: float = 0.1, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, vocab_size=V, max_position_embeddings=256, initializer_range=init,
        tie_word_embeddings=False, eos_token_id=TOK.eos_token_id, pad_token_id=TOK.pad_token_id,
    )
    return random_norms(LlamaForCausalLM(cfg)).eval()


def tiny_qwen2(seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=V, max_position_embeddings=256, initializer_range=0.1,
        tie_word_embeddings=False, eos_token_id=TOK.eos_token_id, pad_token_id=TOK.pad_token_id,
    )
    return random_norms(Qwen2ForCausalLM(cfg)).eval()


MODELS = {"llama": tiny_llama, "qwen2": tiny_qwen2}


def bigram_model(transitions: dict[str, str], tok: PreTrainedTokenizerFast = TOK) -> LlamaForCausalLM:
    """A Llama whose blocks add nothing, so next-token logits depend on the current token only:
    orthonormal embeddings and an lm_head that maps each `a` to `transitions[a]` with a large margin.
    '<eos>' as a target means the EOS id."""
    model = tiny_llama(hidden=128)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        q, _ = torch.linalg.qr(torch.randn(128, V))  # (128, V) orthonormal columns
        emb = q.T.contiguous()  # (V, 128)
        model.model.embed_tokens.weight.copy_(emb)
        head = torch.zeros(V, 128)
        for a, b in transitions.items():
            b_id = tok.eos_token_id if b == "<eos>" else enc(b, tok)[0]
            head[b_id] += 4.0 * emb[enc(a, tok)[0]]  # margin 4 * sqrt(128) ~ 45 logits
        model.lm_head.weight.copy_(head)
    return model


def naive_greedy(model, prompt: list[int], max_new: int, eos: int) -> tuple[list[int], list[float]]:
    """Reference: one prompt, full forward over the whole sequence at every step, no cache."""
    seq, out_lp = list(prompt), []
    for _ in range(max_new):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([seq])).logits[0, -1].float()  # (V,)
        t = int(logits.argmax())
        out_lp.append(float(F.log_softmax(logits, -1)[t]))
        seq.append(t)
        if t == eos:
            break
    return seq[len(prompt) :], out_lp


def full_forward_logprobs(model, prompt: list[int], completion: list[int], temperature: float) -> torch.Tensor:
    seq = torch.tensor([prompt + completion])  # (1, P + C)
    with torch.no_grad():
        logits = model(input_ids=seq).logits[0].float()  # (P + C, V)
    logp = F.log_softmax(logits[len(prompt) - 1 : -1] / temperature, dim=-1)  # (C, V)
    return logp.gather(-1, torch.tensor(completion).unsqueeze(-1)).squeeze(-1)  # (C,)


PROMPTS = ["What is 2+3? ", "hi", "Solve: x*x = 49, x = "]


def check_shapes(r, B: int, G: int) -> None:
    N = B * G
    assert r.group.tolist() == [b for b in range(B) for _ in range(G)]
    assert r.completion_ids.shape == r.completion_mask.shape == r.logprobs.shape
    assert r.completion_ids.shape[0] == N and r.logprobs.dtype == torch.float32
    assert r.completion_mask.sum(-1).tolist() == r.lengths.tolist()
    assert int(r.lengths.max()) == r.completion_ids.shape[1]
    assert torch.all(r.logprobs[~r.completion_mask] == 0)
    assert torch.all(r.logprobs[r.completion_mask] <= 0)
    pad = TOK.pad_token_id
    assert torch.all(r.completion_ids[~r.completion_mask] == pad)
    assert len(r.texts) == N


@pytest.mark.parametrize("engine", ["lean", "hf"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("texts", [PROMPTS, PROMPTS[:1]], ids=["left-padded", "one-prompt"])  # mask / no-mask paths
def test_logprobs_match_full_forward(arch, engine, texts):
    model = MODELS[arch]()
    prompts = [enc(p) for p in texts]
    B = len(prompts)
    params = SamplingParams(max_new_tokens=12, temperature=0.7)
    r = sample(model, TOK, prompts, 3, params, torch.Generator().manual_seed(0), engine=engine)
    check_shapes(r, B, 3)
    for n in range(3 * B):
        c = r.completion_ids[n, : r.lengths[n]].tolist()
        ref = full_forward_logprobs(model, prompts[n // 3], c, 0.7)
        torch.testing.assert_close(r.logprobs[n, : r.lengths[n]], ref, atol=1e-5, rtol=1e-5)
        assert r.texts[n] == TOK.decode([t for t in c if t != TOK.eos_token_id])


@pytest.mark.parametrize("engine", ["lean", "hf"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_greedy_prefix_sharing_and_left_padding_match_naive(arch, engine):
    """Covers prefix sharing (G copies of one prefill) and left padding (mixed prompt lengths)."""
    model = MODELS[arch]()
    prompts = [enc(p) for p in PROMPTS]
    r = sample(model, TOK, prompts, 2, SamplingParams(max_new_tokens=10, temperature=0.0), engine=engine)
    check_shapes(r, 3, 2)
    for n in range(6):
        ids, lps = naive_greedy(model, prompts[n // 2], 10, TOK.eos_token_id)
        assert r.completion_ids[n, : r.lengths[n]].tolist() == ids
        torch.testing.assert_close(r.logprobs[n, : r.lengths[n]], torch.tensor(lps), atol=1e-5, rtol=1e-5)
    # each prompt alone in its own batch gives the same result as the mixed-length batch
    for b, p in enumerate(prompts):
        alone = sample(model, TOK, [p], 1, SamplingParams(max_new_tokens=10, temperature=0.0), engine=engine)
        assert alone.completion_ids[0, : alone.lengths[0]].tolist() == r.completion_ids[2 * b, : r.lengths[2 * b]].tolist()


def test_determinism():
    model = tiny_llama()
    prompts = [enc(p) for p in PROMPTS]
    params = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9)
    a = sample(model, TOK, prompts, 4, params, torch.Generator().manual_seed(123))
    b = sample(model, TOK, prompts, 4, params, torch.Generator().manual_seed(123))
    c = sample(model, TOK, prompts, 4, params, torch.Generator().manual_seed(124))
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.logprobs, b.logprobs)
    assert a.texts == b.texts
    assert a.completion_ids.shape != c.completion_ids.shape or not torch.equal(a.completion_ids, c.completion_ids)
    # samples of one group differ from one another (they are not copies)
    assert len(set(a.texts[:4])) > 1


def test_top_p_tiny_equals_greedy():
    model = tiny_llama()
    prompts = [enc(p) for p in PROMPTS]
    greedy = sample(model, TOK, prompts, 2, SamplingParams(max_new_tokens=10, temperature=0.0))
    nucleus = sample(model, TOK, prompts, 2, SamplingParams(max_new_tokens=10, temperature=1.0, top_p=1e-4),
                     torch.Generator().manual_seed(7))
    assert torch.equal(greedy.completion_ids, nucleus.completion_ids)
    torch.testing.assert_close(greedy.logprobs, nucleus.logprobs)  # both at temperature 1, full distribution


CHAINS = {"S": "<", "<": "/", "/": "a", "a": ">", ">": "k", "k": "k", "E": "x", "x": "<eos>", "q": "q"}


def test_stop_string_eos_and_truncation():
    model = bigram_model(CHAINS)
    params = SamplingParams(max_new_tokens=8, temperature=1.0, stop_strings=("</a>",))
    r = sample(model, TOK, [enc("go S"), enc("E"), enc("qq q")], 2, params, torch.Generator().manual_seed(0))
    check_shapes(r, 3, 2)
    assert r.texts == ["</a>", "</a>", "x", "x", "q" * 8, "q" * 8]
    assert r.lengths.tolist() == [4, 4, 2, 2, 8, 8]
    assert r.truncated.tolist() == [False, False, False, False, True, True]
    assert r.completion_ids[2, :2].tolist() == [enc("x")[0], TOK.eos_token_id]
    assert r.completion_mask[0, :4].all() and r.completion_mask[2, :2].all()
    assert torch.all(r.logprobs[r.completion_mask] > -1e-3)  # the chain is near-certain even at T=1
    # without the stop string the same chain runs on to max_new_tokens
    r2 = sample(model, TOK, [enc("S")], 1, SamplingParams(max_new_tokens=6, temperature=0.0))
    assert r2.texts == ["</a>kk"] and r2.truncated.tolist() == [True]


def test_pad_equals_eos_tokenizer():
    tok = char_tokenizer(with_pad=False)
    assert tok.pad_token_id is None
    model = bigram_model(CHAINS, tok)
    r = sample(model, tok, [enc("E", tok), enc("q", tok)], 1, SamplingParams(max_new_tokens=5, temperature=0.0))
    assert r.texts == ["x", "qqqqq"] and r.lengths.tolist() == [2, 5]
    assert r.completion_ids[0].tolist() == [enc("x", tok)[0]] + [tok.eos_token_id] * 4  # EOS then EOS padding
    assert r.completion_mask[0].tolist() == [True, True, False, False, False]
    assert r.truncated.tolist() == [False, True]


@pytest.mark.parametrize("engine", ["lean", "hf"])
def test_finished_rows_are_dropped_from_decode_batch(engine, monkeypatch):
    model = bigram_model(CHAINS)
    sizes: list[int] = []
    make = rollout._engine

    def recording_engine(*args):
        eng = make(*args)
        prefill, step = eng.prefill, eng.step
        eng.prefill = lambda ids, mask: (sizes.append(ids.shape[0]), prefill(ids, mask))[1]
        eng.step = lambda tok, pos: (sizes.append(tok.shape[0]), step(tok, pos))[1]
        return eng

    monkeypatch.setattr(rollout, "_engine", recording_engine)
    params = SamplingParams(max_new_tokens=8, temperature=0.0, stop_strings=("</a>",))
    r = sample(model, TOK, [enc("E"), enc("q"), enc("S")], 2, params, engine=engine)
    assert type(r) is rollout.Rollout
    assert r.lengths.tolist() == [2, 2, 8, 8, 4, 4]
    # prefill 3 prompts once; decode 6 rows, then 4 once E rows hit EOS, then 2 once S rows hit the stop string
    assert sizes == [3, 6, 4, 4, 2, 2, 2, 2]


def test_bfloat16_model():
    model = tiny_llama().to(torch.bfloat16)
    prompts = [enc(p) for p in PROMPTS]
    r = sample(model, TOK, prompts, 2, SamplingParams(max_new_tokens=8, temperature=1.0), torch.Generator().manual_seed(0))
    check_shapes(r, 3, 2)
    assert torch.isfinite(r.logprobs).all()
    for n in range(6):
        c = r.completion_ids[n, : r.lengths[n]].tolist()
        ref = full_forward_logprobs(model, prompts[n // 2], c, 1.0)
        torch.testing.assert_close(r.logprobs[n, : r.lengths[n]], ref, atol=0.1, rtol=0.05)


def test_min_new_tokens_masks_eos_and_stop_strings():
    model = bigram_model(CHAINS)
    params = SamplingParams(max_new_tokens=6, temperature=0.0, min_new_tokens=4, stop_strings=("</a>",))
    r = sample(model, TOK, [enc("E")], 1, params)
    assert r.lengths.tolist()[0] >= 5  # without the ban: "x", EOS (length 2)
    assert TOK.eos_token_id not in r.completion_ids[0, :4].tolist()


@pytest.mark.parametrize("engine", ["lean", "hf"])
def test_min_new_tokens_stores_the_policys_logprobs(engine):
    """Under min_new_tokens the draw excludes EOS, but the stored log-probs are the unmasked
    policy's, as the trainer computes π_old: otherwise the first ratio is 1 − P(EOS), not 1."""
    model = MODELS["llama"]()
    with torch.no_grad():
        model.lm_head.weight[TOK.eos_token_id] += 0.5  # EOS likely (P ~ 0.3): masking it shifts log-probs a lot
    prompts = [enc(p) for p in PROMPTS]
    r = sample(model, TOK, prompts, 2, SamplingParams(max_new_tokens=8, temperature=0.8, min_new_tokens=8),
               torch.Generator().manual_seed(0), engine=engine)
    assert (r.lengths == 8).all()
    for n in range(6):
        ref = full_forward_logprobs(model, prompts[n // 2], r.completion_ids[n].tolist(), 0.8)
        torch.testing.assert_close(r.logprobs[n], ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("temperature,top_p", [(0.5, 1.0), (2.0, 1.0), (0.5, 0.9)])
def test_draws_follow_the_reported_tempered_distribution(temperature, top_p):
    """Tokens are drawn from the distribution whose log-probs are reported: softmax(logits / T)
    (renormalised over the nucleus with top-p), not at T = 1."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5, 1.5]]).repeat(40000, 1)  # (n, 6)
    tok, logp = rollout._next_token(logits, SamplingParams(temperature=temperature, top_p=top_p),
                                    torch.Generator().manual_seed(0))
    p = torch.softmax(logits[0] / temperature, -1)  # (6,) the tempered policy
    torch.testing.assert_close(logp, p.log()[tok])  # what is reported
    if top_p < 1:  # the nucleus: the most likely tokens until their mass reaches top_p, renormalised
        order = p.argsort(descending=True)
        keep = order[: int((p[order].cumsum(0) - p[order] < top_p).sum())]
        p = torch.zeros_like(p).index_fill(0, keep, 1.0) * p
        p = p / p.sum()
    freq = torch.bincount(tok, minlength=6).float() / len(tok)
    torch.testing.assert_close(freq, p, atol=0.01, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_bf16_engine_close_to_fp32(arch):
    """Sampling with bf16 layer matrices: log-probs of the sampled tokens near the fp32 policy's."""
    model = MODELS[arch]()
    prompts = [enc(p) for p in PROMPTS]
    params = SamplingParams(max_new_tokens=8, temperature=1.0)
    r = sample(model, TOK, prompts, 2, params, torch.Generator().manual_seed(0), engine_dtype=torch.bfloat16)
    check_shapes(r, 3, 2)
    for n in range(6):
        c = r.completion_ids[n, : r.lengths[n]].tolist()
        ref = full_forward_logprobs(model, prompts[n // 2], c, 1.0)  # the fp32 model
        torch.testing.assert_close(r.logprobs[n, : r.lengths[n]], ref, atol=0.05, rtol=0.05)


def test_categorical_draws_follow_the_distribution():
    from thinkrl.engine.sampler import _categorical

    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3], [0.0, 0.0, 0.0, 2.0]])  # unnormalised row 2, zeros never drawn
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([_categorical(probs, g) for _ in range(20000)])  # (20000, 2)
    freq = torch.bincount(draws[:, 0], minlength=4).float() / 20000
    assert torch.allclose(freq, torch.tensor([0.1, 0.0, 0.6, 0.3]), atol=0.015)
    assert (draws[:, 1] == 3).all() and not (draws[:, 0] == 1).any()


@pytest.mark.parametrize("one_level_max", [256, 4096])  # the two-level path, then the one-level one
def test_categorical_follows_the_distribution_and_the_one_level_inversion(one_level_max, monkeypatch):
    """V = 1000 (not a multiple of the 256-wide blocks): zero entries (one whole block, the tail)
    are never drawn, frequencies match, and each draw equals the plain float64 inverse CDF's
    for the same uniform."""
    from thinkrl.engine import sampler as rollout
    from thinkrl.engine.sampler import _categorical

    monkeypatch.setattr(rollout, "CDF_ONE_LEVEL_MAX", one_level_max)
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(3, 1000, generator=g) ** 4  # (3, 1000) uneven
    probs[:, 256:512] = 0.0  # a whole block empty
    probs[:, 990:] = 0.0  # trailing zeros
    probs[2] = 0.0
    probs[2, [3, 600, 989]] = torch.tensor([0.2, 0.5, 0.3])  # sparse row: one entry per block
    draws = torch.stack([_categorical(probs, torch.Generator().manual_seed(s)) for s in range(4000)])  # (4000, 3)
    assert not (probs.gather(1, draws.t()) == 0).any()
    ref = []
    for s in range(4000):  # the same uniforms through a one-level float64 CDF
        u = torch.rand(3, 1, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
        cdf = probs.double().cumsum(-1)
        ref.append(torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1))
    assert (draws == torch.stack(ref)).float().mean() > 0.999
    freq = torch.bincount(draws[:, 2], minlength=1000).float() / 4000
    assert torch.allclose(freq[[3, 600, 989]], torch.tensor([0.2, 0.5, 0.3]), atol=0.03)


def test_inversion_never_lands_on_trailing_zeros():
    """A target rounded up to the total (a uniform next to 1) selects the last entry with mass,
    not a zero entry after it nor an index past the end."""
    from thinkrl.engine.sampler import _invert

    cdf = torch.tensor([[0.25, 0.25, 1.0, 1.0, 1.0], [0.5, 1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)  # (2, 5)
    assert _invert(cdf, cdf[:, -1:]).tolist() == [2, 1]
    assert _invert(cdf, torch.tensor([[0.0], [0.5]], dtype=torch.float64)).tolist() == [0, 1]
    assert _invert(cdf, torch.tensor([[0.25], [0.49]], dtype=torch.float64)).tolist() == [2, 0]


@pytest.mark.parametrize("scale,top_p", [(4.0, 0.9), (1.0, 0.95), (0.3, 0.95), (0.0, 0.95), (8.0, 0.5)])
def test_nucleus_equals_the_full_sort(scale, top_p):
    """Top-p through top-256 / top-4096 / full sort: the same kept tokens and probabilities as
    sorting all 10,000 (scale 0: uniform, the nucleus needs ~9,500 tokens)."""
    from thinkrl.engine.sampler import _nucleus

    logits = torch.randn(4, 10_000, generator=torch.Generator().manual_seed(1)) * scale  # (4, V)
    logp = F.log_softmax(logits, -1)
    probs, ids = _nucleus(logp, top_p)  # (4, k)
    sorted_logp, sorted_idx = logp.sort(dim=-1, descending=True)
    p = sorted_logp.exp()
    keep = (p.cumsum(-1) - p) < top_p  # (4, V) the reference nucleus
    for r in range(4):
        n = int(keep[r].sum())
        assert int((probs[r] > 0).sum()) == n
        assert set(ids[r, :n].tolist()) == set(sorted_idx[r, :n].tolist())
        torch.testing.assert_close(probs[r, :n], p[r, :n])


def test_take_groups_and_concat_keep_each_rows_samples():
    """Groups picked from two rollouts and joined: every row keeps its prompt, tokens, mask,
    log-probs, text and length; shorter parts are padded with the pad id."""
    model = MODELS["llama"]()
    params = SamplingParams(max_new_tokens=6, temperature=1.0, stop_strings=("a",))
    a = sample(model, TOK, [enc(p) for p in PROMPTS], 2, params, torch.Generator().manual_seed(0))
    b = sample(model, TOK, [enc("hello"), enc("x")], 2, SamplingParams(max_new_tokens=3), torch.Generator().manual_seed(1))
    joined = rollout.concat_rollouts([rollout.take_groups(a, [2, 0]), rollout.take_groups(b, [1])], TOK.pad_token_id)
    check_shapes(joined, 3, 2)
    sources = [(a, 4), (a, 5), (a, 0), (a, 1), (b, 2), (b, 3)]  # (rollout, row) of each joined row
    assert joined.prompt_ids == [a.prompt_ids[2], a.prompt_ids[0], b.prompt_ids[1]]
    for n, (src, r) in enumerate(sources):
        k = int(src.lengths[r])
        assert joined.texts[n] == src.texts[r] and joined.lengths[n] == k and joined.truncated[n] == src.truncated[r]
        assert joined.prompt_ids[int(joined.group[n])] == src.prompt_ids[int(src.group[r])]
        assert torch.equal(joined.completion_ids[n, :k], src.completion_ids[r, :k])
        assert torch.equal(joined.logprobs[n, :k], src.logprobs[r, :k])
        assert joined.completion_mask[n].sum() == k
        assert (joined.completion_ids[n, k:] == TOK.pad_token_id).all()


def test_row_generators_make_a_prompts_samples_independent_of_its_batch_mates():
    """One generator per row, seeded by (seed, key, sample): prompt B's completions are the same
    sampled beside prompt A as alone (what lets N data-parallel ranks sample as one process);
    with one generator for the batch they differ."""
    model = tiny_llama(init=0.5)
    with torch.no_grad():
        model.lm_head.weight[TOK.eos_token_id] *= 2.0  # rows finish at different steps (dropped mid-decode)
    a, b = enc("Hi there"), enc("Q: 2+2?")
    params = SamplingParams(max_new_tokens=24, temperature=1.0, top_p=0.95)
    gens = lambda keys: rollout.row_generators(7, keys, 3, "cpu")  # noqa: E731
    both = sample(model, TOK, [a, b], 3, params, gens([10, 11]))
    alone = sample(model, TOK, [b], 3, params, gens([11]))
    assert len(set(both.lengths.tolist())) > 3
    assert both.texts[3:] == alone.texts
    assert len(set(both.texts)) > 2  # the rows really are random draws
    assert sample(model, TOK, [b], 3, params, gens([12])).texts != alone.texts  # another key, other draws
    shared = sample(model, TOK, [a, b], 3, params, torch.Generator().manual_seed(7))
    shared_alone = sample(model, TOK, [b], 3, params, torch.Generator().manual_seed(7))
    assert shared.texts[3:] != shared_alone.texts
    with pytest.raises(ValueError, match="5 row generators for 2 prompts x 3 samples"):
        sample(model, TOK, [a, b], 3, params, gens([10, 11])[:5])
