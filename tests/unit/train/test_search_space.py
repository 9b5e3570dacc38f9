"""`--param` specs of `llmpipe sweep`: typed by the config field, validated before anything runs, and an
error that names the spec and the field."""

from __future__ import annotations

import pytest

from flows.cli import main
from llm.config import ConfigError, PipelineConfig, build_config
from llm.train.search_space import parse_space, with_values


@pytest.fixture()
def base() -> PipelineConfig:
    return build_config({"model": {"hidden_size": 32, "attention_heads": 2}})


def test_specs_are_typed_by_their_fields(base):
    lr, layers, strategy, warmup, decay = parse_space(
        ["train.learning_rate=loguniform:1e-4:1e-2", "model.layers=choice:2,4", "train.decay=choice:cosine,linear",
         "train.warmup_steps=randint:0:3", "train.weight_decay=uniform:0:0.2"], base)
    assert (lr.kind, lr.values) == ("loguniform", (1e-4, 1e-2))
    assert layers.values == (2, 4) and all(type(v) is int for v in layers.values)
    assert strategy.values == ("cosine", "linear")
    assert warmup.values == (0, 3)
    assert decay.values == (0.0, 0.2) and all(type(v) is float for v in decay.values)
    # randint includes both ends: Tune's upper end is exclusive, so the domain reaches one past it.
    drawn = {warmup.domain().sample() for _ in range(200)}
    assert drawn == {0, 1, 2, 3}
    assert all(1e-4 <= lr.domain().sample() <= 1e-2 for _ in range(50))
    assert set(layers.domain().sample(size=50)) == {2, 4}


def test_sampled_values_make_a_validated_config(base):
    cfg = with_values(base, {"train.learning_rate": 0.004, "model.layers": 2})
    assert cfg.train.learning_rate == 0.004 and cfg.model.layers == 2
    assert cfg.model.hidden_size == 32  # the rest stays as the base has it


@pytest.mark.parametrize("spec, message", [
    ("train.learnig_rate=uniform:1e-4:1e-2", "train.learnig_rate is not a config field"),
    ("train=choice:1,2", "is not one"),
    ("model.hidden=choice:1,2", "model.hidden is not a config field"),
    ("data.minhash.threshold=uniform:0.7:0.9", "only fields of model.* and train.*"),
    ("train.num_workers=choice:1,2", "sets a trial's resources"),
    ("train.learning_rate", "is not FIELD=KIND:ARGS"),
    ("train.learning_rate=normal:0:1", "unknown distribution 'normal'"),
    ("train.learning_rate=uniform:1e-2", "uniform needs two ends"),
    ("train.learning_rate=uniform:abc:1", "'abc' is not a number"),
    ("train.learning_rate=uniform:1e-2:1e-4", "must be below the high end"),
    ("train.learning_rate=loguniform:0:1e-2", "loguniform needs a low end above 0"),
    ("train.learning_rate=uniform:1e-4:20", "20.0 is not a valid train.learning_rate: train.learning_rate: "
                                            "Input should be less than or equal to 10"),
    ("train.max_steps=uniform:10:20", "use randint"),
    ("train.learning_rate=randint:1:3", "randint draws integers but train.learning_rate is not an integer field"),
    ("train.decay=uniform:0:1", "use choice"),
    ("model.layers=randint:2:1.5", "'1.5' is not an integer"),
    ("model.layers=choice:2,0", "0 is not a valid model.layers"),
    ("model.layers=choice:2,,4", "choice needs values separated by commas"),
    ("model.layers=choice:2,2", "listed twice"),
    ("train.strategy=choice:ddp,zero", "'zero' is not a valid train.strategy"),
    ("model.attention_heads=choice:2,3", "hidden_size (32) must be divisible by attention_heads (3)"),
])
def test_bad_specs_name_the_spec_and_the_field(base, spec, message):
    with pytest.raises(ConfigError) as err:
        parse_space([spec], base)
    assert message in str(err.value)
    assert "--param" in str(err.value)


def test_combinations_are_checked_together(base):
    # Each alone is valid with the base (48 wide, 4 heads); together 32 / 3 is not whole.
    base = with_values(base, {"model.hidden_size": 48, "model.attention_heads": 4})
    with pytest.raises(ConfigError, match="the combination model.hidden_size=32, model.attention_heads=3"):
        parse_space(["model.hidden_size=choice:32,48", "model.attention_heads=choice:4,3"], base)
    with pytest.raises(ConfigError, match="already swept"):
        parse_space(["model.layers=choice:2,4", "model.layers=randint:1:3"], base)
    with pytest.raises(ConfigError, match="at least one --param"):
        parse_space([], base)


def test_cli_bad_spec_is_one_line_and_exit_2(capsys):
    assert main(["sweep", "--param", "train.learning_rate=uniform:1:0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["llmpipe: error: --param train.learning_rate=uniform:1:0.5: the low end 1 must be below the "
                   "high end 0.5"]


def test_cli_bad_option_names_it(capsys, tmp_path):
    assert main(["sweep", f"work_dir={tmp_path}", "--param", "model.layers=choice:2,4", "--samples", "0"]) == 2
    assert "--samples: Input should be greater than or equal to 1" in capsys.readouterr().err


def test_cli_without_tokens_says_what_to_run(capsys, tmp_path):
    assert main(["sweep", f"work_dir={tmp_path / 'work'}", "--param", "model.layers=choice:2,4"]) == 2
    err = capsys.readouterr().err
    assert f"no token dataset at {tmp_path / 'work' / 'tokens'}" in err and "llmpipe tokenize" in err
