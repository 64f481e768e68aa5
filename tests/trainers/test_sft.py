"""SFT: completion-only labels, exact packing (loss and gradients), schedule, NaN skip, a tiny run, the CLI."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from thinkrl.cli import main as cli
from thinkrl.trainers import sft
from thinkrl.data.loaders import DataError
from thinkrl.data.templates import r1_zero_prompt
from thinkrl.trainers.sft import SFTConfig, cosine_lr, load_sft_examples, sft_micro_loss, train_sft
from thinkrl.data.sft_rows import IGNORE, encode_example, step_micro_batches

CHAT = ("{% for m in messages %}[{{ m['role'][0] }}]{{ m['content'] }}|{% endfor %}"
        "{% if add_generation_prompt %}[a]{% endif %}")


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character, plus <pad> (0) and <eos> (1)."""
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<eos>", "<unk>"] + [chr(c) for c in range(32, 127)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_labels_cover_exactly_the_response_and_eos():
    tok = char_tokenizer()
    ex = encode_example(tok, {"prompt": "2+2", "response": " 4"}, "plain")
    assert ex.input_ids == ids(tok, "2+2 4") + [tok.eos_token_id]
    assert ex.labels == [IGNORE] * 3 + ids(tok, " 4") + [tok.eos_token_id]
    assert ex.prompt_len == 3
    r1 = encode_example(tok, {"prompt": "q", "response": "r"}, "r1_zero")
    assert r1.input_ids == ids(tok, r1_zero_prompt("q") + "r") + [tok.eos_token_id]
    assert r1.labels.count(IGNORE) == len(r1_zero_prompt("q"))


def test_chat_rows_train_only_assistant_turns():
    tok = char_tokenizer()
    tok.chat_template = CHAT
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
            {"role": "assistant", "content": "r"}, {"role": "user", "content": "x"},
            {"role": "assistant", "content": "yz"}]
    ex = encode_example(tok, {"messages": msgs}, "chat")
    # rendered: "[s]s|[u]q|[a]r|[u]x|[a]yz|" + <eos>; loss on "r|", "yz|" and the EOS
    text = "[s]s|[u]q|[a]r|[u]x|[a]yz|"
    assert ex.input_ids == ids(tok, text) + [tok.eos_token_id]
    loss_chars = [text[t] for t, y in enumerate(ex.labels[:-1]) if y != IGNORE]
    assert "".join(loss_chars) == "r|yz|" and ex.labels[-1] == tok.eos_token_id
    assert ex.prompt_len == len("[s]s|[u]q|[a]")
    # a prompt/response row under the chat template is the two-turn conversation
    pr = encode_example(tok, {"prompt": "q", "response": "r"}, "chat", suffix="S")
    assert pr.input_ids == ids(tok, "[u]q\nS|[a]r|") + [tok.eos_token_id]
    with pytest.raises(DataError, match="need the chat template"):
        encode_example(tok, {"messages": msgs}, "plain")


@pytest.mark.parametrize("row, message", [
    ({"prompt": "a"}, "expected fields 'prompt' and 'response', or 'messages'"),
    ({"prompt": "a", "response": 3}, "must be strings"),
    ({"messages": [{"role": "user", "content": "q"}]}, "no assistant turn"),
    ({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]},
     "starts with an assistant"),
])
def test_bad_rows_name_file_and_line(tmp_path, row, message):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=f"{path}:3: .*{message}"):
        load_sft_examples(path)


def _reference(model, encoded, indices):
    """Σ NLL over response tokens, each example run alone with no mask at all, and the token count."""
    total, count = 0.0, 0
    for i in indices:
        ex = encoded[i]
        logits = model(input_ids=torch.tensor([ex.input_ids])).logits[0, :-1]  # (T-1, V)
        labels = torch.tensor(ex.labels[1:])  # (T-1,)
        total = total + F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction="sum")
        count += int((labels != IGNORE).sum())
    return total, count


def _step_loss_and_grads(model, mbs, n_tok):
    model.zero_grad()
    loss = sum(sft_micro_loss(model, mb) for mb in mbs) / n_tok
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packing_gives_the_same_loss_and_gradients(tiny_model, tiny_tokenizer, attn):
    tiny_model.config._attn_implementation = attn
    rows = [{"prompt": f"What is {a} + {b} ?", "response": " " + " ".join(str(a + b) for _ in range(a % 4 + 1))}
            for a, b in [(1, 2), (13, 4), (7, 7), (2, 30), (5, 1), (9, 9)]]
    encoded = [encode_example(tiny_tokenizer, r, "plain") for r in rows]
    idx = list(range(len(encoded)))
    pad = tiny_tokenizer.pad_token_id
    packed = step_micro_batches(encoded, idx, True, 48, 2, pad)
    unpacked = step_micro_batches(encoded, idx, False, 48, 4, pad)
    assert sum(mb.input_ids.shape[0] for mb in packed) < len(encoded)  # really packed
    assert sorted(i for mb in packed for i in mb.examples) == idx
    ref_sum, n_tok = _reference(tiny_model, encoded, idx)
    tiny_model.zero_grad()
    (ref_sum / n_tok).backward()
    ref_grads = [p.grad.clone() for p in tiny_model.parameters()]
    for mbs in (packed, unpacked):
        assert sum(int((mb.labels[:, 1:] != IGNORE).sum()) for mb in mbs) == n_tok
        loss, grads = _step_loss_and_grads(tiny_model, mbs, n_tok)
        assert torch.allclose(loss, ref_sum.detach() / n_tok, atol=1e-5, rtol=1e-5)
        for g, r in zip(grads, ref_grads):
            assert torch.allclose(g, r, atol=1e-6, rtol=1e-4)


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    lrs = [cosine_lr(s, 10, 2, 5e-5, 5e-6) for s in range(10)]
    assert lrs[0] == pytest.approx(2.5e-5) and lrs[1] == pytest.approx(5e-5)
    assert lrs[-1] == pytest.approx(5e-6) and all(a >= b for a, b in zip(lrs[1:], lrs[2:]))
    assert cosine_lr(0, 1, 0, 1e-4, 1e-5) == pytest.approx(1e-4)  # a single step trains at the peak


def _arith_rows(n):
    rows = []
    for i in range(n):
        a, b = i % 7 + 1, (3 * i) % 5 + 1
        rows.append({"prompt": f"What is {a} + {b} ?", "response": f" <answer> {a + b} </answer>"})
    return rows


def _cfg(**kw):
    base = dict(template="plain", epochs=1, lr=1e-3, min_lr=1e-4, batch_size=4, micro_batch_size=2, max_seq_len=64,
                eos_check_prompts=0, warmup_ratio=0.0)
    return SFTConfig(**{**base, **kw})


def test_non_finite_loss_skips_the_update(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(sft, "nll_sum", lambda logits, targets: logits.float().sum() * float("nan"))
    before = [p.detach().clone() for p in tiny_model.parameters()]
    summary = train_sft(tiny_model, tiny_tokenizer, _arith_rows(8), _cfg(), tmp_path, log=lambda m: None)
    assert summary["skipped_updates"] == summary["steps"] == 2
    assert all(torch.equal(a, b) for a, b in zip(before, tiny_model.parameters()))


def test_too_long_examples_are_dropped_and_counted(tiny_model, tiny_tokenizer, tmp_path):
    rows = _arith_rows(4) + [{"prompt": "x " * 200, "response": " y"}]
    summary = train_sft(tiny_model, tiny_tokenizer, rows, _cfg(), tmp_path, log=lambda m: None)
    assert summary["dropped_too_long"] == 1 and summary["examples"] == 4
    with pytest.raises(DataError, match="longer than max_seq_len=64"):
        train_sft(tiny_model, tiny_tokenizer, rows[-1:], _cfg(), tmp_path, log=lambda m: None)


def test_tiny_sft_run_lowers_the_loss_and_checks_eos(tiny_model, tiny_tokenizer, tmp_path):
    cfg = _cfg(epochs=12, lr=1e-2, min_lr=1e-3, batch_size=8, eos_check_prompts=4, warmup_ratio=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a low EOS rate would only warn
        summary = train_sft(tiny_model, tiny_tokenizer, _arith_rows(16), cfg, tmp_path / "out", log=lambda m: None)
    assert summary["loss_by_epoch"][-1] < 0.5 * summary["loss_by_epoch"][0]
    eos = summary["eos_check"]
    assert eos["prompts"] == 4 and eos["eos_rate"] >= 0.75 and eos["max_new_tokens"] >= 16  # it learned to stop
    out = tmp_path / "out"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len([x for x in lines if "loss" in x]) == summary["steps"] == 24 and "eos_rate" in lines[-1]
    assert json.loads((out / "summary.json").read_text())["eos_check"] == eos
    assert (out / "final_model" / "config.json").is_file() and not list(out.glob(".tmp-*"))
    from thinkrl.models.loading import load_model
    reloaded, _ = load_model(str(out / "final_model"))
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), tiny_model.state_dict().values()))


def test_low_eos_rate_warns(tiny_model, tiny_tokenizer, tmp_path):
    cfg = _cfg(eos_check_prompts=2, eos_check_max_new_tokens=1, eos_warn_below=1.0)
    logged = []
    with pytest.warns(UserWarning, match="may not have learned to stop"):
        train_sft(tiny_model, tiny_tokenizer, _arith_rows(4), cfg, tmp_path, log=logged.append)
    assert any(m.startswith("WARNING") for m in logged)


def test_cli_sft_runs_and_reports_bad_data(tiny_model, tiny_tokenizer, tmp_path, capsys):
    model_dir = tmp_path / "m"
    tiny_model.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _arith_rows(6)))
    out = tmp_path / "out"
    assert cli.main(["sft", "--model", str(model_dir), "--data", str(data), "--output-dir", str(out), "--epochs", "1",
                     "--template", "plain", "--no-packing", "--eos-check-prompts", "1", "--eos-warn-below", "0",
                     "--device", "cpu"]) == 0
    capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sft_config"]["packing"] is False and summary["template"] == "plain"
    data.write_text('{"prompt": "p", "response": "r"}\n{"prompt": "p"}\n')
    assert cli.main(["sft", "--model", str(model_dir), "--data", str(data), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("thinkrl: error:") and f"{data}:2:" in err and len(err.splitlines()) == 1
    assert cli.main(["sft", "--model", str(model_dir), "--data", str(data), "--lr", "0"]) == 2
    assert "sft lr=0.0" in capsys.readouterr().err


def test_sft_help_gives_paper_values(capsys):
    with pytest.raises(SystemExit):
        cli.main(["sft", "--help"])
    out = capsys.readouterr().out
    for needle in ("--packing", "--no-packing", "5e-5", "5e-6", "32,768", "--max-seq-len", "Paper: 128"):
        assert needle in out, needle
