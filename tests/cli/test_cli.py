"""The command line: help text with paper values, clear errors for bad options, config round trip."""

import subprocess
import sys

import pytest
import yaml

from thinkrl.cli import main as cli
from thinkrl.config import ConfigError, load_config, to_dict


def test_help_lists_every_option_with_paper_values(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    for needle in ("grpo.beta", "0.001 (R1-Zero)", "grpo.epsilon_high", "DAPO", "grpo.group_size",
                   "rewards.weights", "run.eval_temperature", "grpo.ref_reset_every", "400"):
        assert needle in out, needle


@pytest.mark.parametrize("args, message", [
    (["grpo.lr=fast"], "grpo.lr: expected float"),
    (["grpo.nope=1"], "unknown option 'grpo.nope'"),
    (["grpo.lrr=1"], "unknown option 'grpo.lrr' (did you mean 'lr'?)"),
    (["gpro.lr=1"], "unknown option 'gpro.lr' (did you mean 'grpo'?)"),
    (["run.parallel=zero3"], "run.parallel='zero3'; choose one of ddp, fsdp2"),
    (["grpo.value_head=twin"], "grpo.value_head='twin'; choose one of copy, shared"),
    (["lr=1"], "unknown option 'lr'"),
    (["grpo.lr"], "not key=value"),
    (["--config", "/does/not/exist.yaml"], "does not exist"),
    (["model.path=/nonexistent/model", "grpo.steps=1"], "model path '/nonexistent/model'"),
    (["grpo.advantage_scale=zscore"], "choose one of group, batch, none"),
    (["rewards.weights={nosuch: 1}"], "unknown reward 'nosuch'"),
    (["grpo.group_size=1"], "at least 2"),
    (["data.dataset=nosuch"], "data.dataset 'nosuch'"),
    (["grpo.temperature=0"], "grpo.temperature=0.0; must be > 0"),
    (["grpo.top_p=1.5"], "grpo.top_p=1.5; must be in (0, 1]"),
    (["grpo.top_p=0"], "grpo.top_p=0.0; must be in (0, 1]"),
    (["grpo.epsilon_low=-0.1"], "grpo.epsilon_low=-0.1; must be >= 0"),
    (["grpo.beta=-1"], "grpo.beta=-1.0; must be >= 0"),
    (["run.eval_top_p=0"], "run.eval_top_p=0.0; must be in (0, 1]"),
    (["rewards.verify_timeout=0"], "rewards.verify_timeout=0.0; must be > 0"),
    (["grpo.sampler_correction=tis"], "grpo.sampler_correction='tis'; choose one of none, token_truncate"),
    (["grpo.sampler_correction_max=0.5", "grpo.sampler_correction_min=1"], "need 0 <= min < max"),
    (["grpo.dynamic_sampling_max_rounds=-1"], "grpo.dynamic_sampling_max_rounds=-1; must be >= 0"),
    (["rewards.overlong_cache=100"], "rewards.overlong_cache=100; must be in [0, grpo.max_new_tokens=64]"),
])
def test_bad_options_get_one_clear_line(args, message, capsys, tmp_path):
    assert cli.main(["train", "--output-dir", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("thinkrl: error:") and message in err and len(err.splitlines()) == 1


def test_yaml_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"grpo": {"lr": 2e-6, "group_size": 4}, "rewards": {"weights": {"accuracy": 1}}}))
    cfg = load_config(recipe, ["grpo.group_size=16", "data.force_think=true", "grpo.stop_strings=[]"])
    assert cfg.grpo.lr == 2e-6 and cfg.grpo.group_size == 16 and cfg.data.force_think is True
    assert cfg.rewards.weights == {"accuracy": 1} and cfg.grpo.stop_strings == []
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(to_dict(cfg)))
    assert to_dict(load_config(again)) == to_dict(cfg)
    with pytest.raises(ConfigError, match="section 'grpo' must be a mapping"):
        bad = tmp_path / "bad.yaml"
        bad.write_text("grpo: 3\n")
        load_config(bad)


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "thinkrl.cli.main", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "thinkrl train" in out.stdout


def test_new_run_into_a_finished_run_dir_is_refused(tmp_path, capsys):
    """Without --resume a run never appends to an older run's metrics (or meets its checkpoints)."""
    old = tmp_path / "run"
    old.mkdir()
    (old / "metrics.jsonl").write_text('{"step": 1}\n')
    assert cli.main(["train", "--output-dir", str(old), "grpo.steps=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("thinkrl: error:") and "already holds a run" in err and "--resume" in err
    assert (old / "metrics.jsonl").read_text() == '{"step": 1}\n'  # untouched
    ckpt = tmp_path / "run2" / "checkpoints" / "step-000001"
    ckpt.mkdir(parents=True)
    (ckpt / "COMPLETE").write_text("")
    assert cli.main(["train", "--output-dir", str(tmp_path / "run2")]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_overrides_may_follow_options(monkeypatch, tmp_path):
    """`train a=1 --output-dir D b=2`: argparse stops the positional at the option; both are overrides."""
    seen = {}
    monkeypatch.setattr("thinkrl.trainers.loop.train_run", lambda cfg, resume=None: seen.update(cfg=cfg))
    assert cli.main(["train", "grpo.steps=3", "--output-dir", str(tmp_path / "r"), "grpo.lr=2e-5", "run.seed=7"]) == 0
    cfg = seen["cfg"]
    assert (cfg.grpo.steps, cfg.grpo.lr, cfg.run.seed, cfg.run.output_dir) == (3, 2e-5, 7, str(tmp_path / "r"))
    with pytest.raises(SystemExit):
        cli.main(["train", "--output-dir", str(tmp_path / "r"), "--nosuch"])


@pytest.mark.parametrize("argv", [["--help"], *([c, "--help"] for c in ("train", "build-base", "eval", "check-rewards",
                                  "sample", "sft", "distill", "rm", "pipeline", "gridworld")), ["sandbox", "run", "--help"]])
def test_help_imports_no_torch(argv):
    """`--help` answers in well under a second: nothing it runs imports torch or transformers."""
    code = ("import sys\nfrom thinkrl.cli.main import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\nassert not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage: thinkrl" in out.stdout


def test_python_dash_m_thinkrl():
    out = subprocess.run([sys.executable, "-m", "thinkrl", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "build-base" in out.stdout and "distill" in out.stdout


def test_print_config_prints_the_resolved_options_and_runs_nothing(tmp_path, capsys, monkeypatch):
    """--print-config: YAML with the shortcuts expanded (loss_type -> aggregation, scale), which
    read back with --config prints the same; no run directory appears."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--print-config", "grpo.loss_type=dr_grpo", "grpo.lr=3e-6"]) == 0
    printed = capsys.readouterr().out
    data = yaml.safe_load(printed)
    assert data["grpo"]["lr"] == 3e-6 and data["grpo"]["loss_aggregation"] == "seq_sum_const"
    assert data["grpo"]["advantage_scale"] == "none" and not (tmp_path / "runs").exists()
    (tmp_path / "r.yaml").write_text(printed)
    assert cli.main(["train", "--print-config", "--config", str(tmp_path / "r.yaml")]) == 0
    assert capsys.readouterr().out == printed
    assert cli.main(["train", "--print-config", "grpo.lrr=1"]) == 2  # still validated


def test_long_stages_show_a_progress_bar_on_a_terminal(tmp_path):
    """On a terminal `thinkrl sft` shows a bar with its ETA and the live loss (off a terminal, as in
    these captured tests, it stays quiet: tqdm's disable=None)."""
    import json
    import os
    import pty

    from thinkrl.models.tiny import SHIPPED_BASE

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "response": f"{i + 1}"}) + "\n" for i in range(8)))
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))  # a terminal 160 columns wide
    proc = subprocess.Popen([sys.executable, "-m", "thinkrl", "sft", "--model", str(SHIPPED_BASE), "--data", str(data),
                             "--output-dir", str(tmp_path / "sft"), "--template", "plain", "--batch-size", "4",
                             "--epochs", "1", "--eos-check-prompts", "0"], stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(timeout=120) == 0, out[-2000:]
    text = out.decode(errors="replace")
    assert "SFT: 100%" in text and "2/2 [" in text and "loss=" in text
