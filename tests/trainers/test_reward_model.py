"""The Bradley–Terry reward model: pairs in, a model that ranks them out, usable as a reward."""

import json

import pytest
import torch

from thinkrl import rewards
from thinkrl.data.loaders import DataError
from thinkrl.models import reward_model
from thinkrl.models.tiny import SHIPPED_BASE
from thinkrl.trainers.reward_model import RMConfig, load_pairs, train_reward_model


@pytest.fixture(scope="module")
def quickstart_pairs():
    """Pairs built as `thinkrl rm --build-pairs` builds them: the shipped base model's own answers."""
    from functools import partial

    from thinkrl.data.problems import load_problems
    from thinkrl.data.templates import build_prompt
    from thinkrl.models.loading import load_model
    from thinkrl.trainers.reward_model import pairs_from_policy

    policy, tok = load_model(str(SHIPPED_BASE))
    problems = load_problems("arithmetic", "train", limit=160, seed=0)
    return pairs_from_policy(policy, tok, problems, partial(build_prompt, "r1_zero", tokenizer=tok), 4, 0, 64,
                             ("</answer>",))


def test_pairs_are_a_correct_and_an_incorrect_answer_to_one_prompt(quickstart_pairs):
    from thinkrl.rewards.extract import extract_answer

    assert len(quickstart_pairs) > 80
    for p in quickstart_pairs[:20]:
        assert p["prompt"].endswith("Assistant:") and extract_answer(p["chosen"]) != extract_answer(p["rejected"])


def test_training_ranks_held_out_pairs_and_the_saved_model_is_a_reward(quickstart_pairs, tmp_path):
    torch.manual_seed(0)
    rm, tok = reward_model.from_policy(str(SHIPPED_BASE))
    summary = train_reward_model(rm, tok, quickstart_pairs, RMConfig(), tmp_path, log=lambda *_: None)
    assert summary["heldout_pairs"] + summary["train_pairs"] == len(quickstart_pairs)
    assert summary["loss_last_step"] < summary["loss_first_step"]
    assert summary["heldout_accuracy_after"] >= 0.8
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["heldout_accuracy_after"] == summary["heldout_accuracy_after"]
    # the saved model as a reward: the trainer's column `prompt_text` + the completion
    path = str(tmp_path / "final_model")
    held = quickstart_pairs[:4]
    out = rewards.score([p["chosen"] for p in held] + [p["rejected"] for p in held],
                        {"prompt_text": [p["prompt"] for p in held] * 2}, {"reward_model": 1.0},
                        {"reward_model": {"path": path}})
    direct = reward_model.score(*reward_model.load(path), [p["prompt"] + p["chosen"] for p in held]
                                + [p["prompt"] + p["rejected"] for p in held])
    assert out.total == pytest.approx(direct.tolist(), abs=1e-5)


def test_bad_pair_rows_name_file_and_line(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n"
                 + json.dumps({"prompt": "a", "chosen": 3, "rejected": "c"}) + "\n")
    with pytest.raises(DataError, match="p.jsonl:2"):
        load_pairs(f)
    f.write_text(json.dumps({"prompt": "a", "chosen": "b"}) + "\n")
    with pytest.raises(DataError, match="p.jsonl:1"):
        load_pairs(f)


def test_reward_model_needs_a_path(tmp_path, capsys):
    from thinkrl.cli import main as cli

    args = ["train", "--output-dir", str(tmp_path / "r"), "rewards.weights={reward_model: 1.0}"]
    assert cli.main(args) == 2
    assert "rewards.reward_model_path" in capsys.readouterr().err


def test_chat_pairs_render_through_the_chat_template(tmp_path):
    from thinkrl.trainers.reward_model import pair_texts

    class Tok:  # a chat template: "<role>content" per message
        def apply_chat_template(self, messages, tokenize):
            assert tokenize is False
            return "".join(f"<{m['role']}>{m['content']}" for m in messages)

    user = [{"role": "user", "content": "2+2?"}]
    rows = [{"chosen": user + [{"role": "assistant", "content": "4"}],
             "rejected": user + [{"role": "assistant", "content": "5"}]}] * 2
    f = tmp_path / "chat.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = load_pairs(f)
    assert pair_texts(pairs, Tok()) == (["<user>2+2?<assistant>4"] * 2, ["<user>2+2?<assistant>5"] * 2)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"chosen": user, "rejected": "5"}) + "\n")
    with pytest.raises(DataError, match="mixed.jsonl:1"):
        load_pairs(mixed)
