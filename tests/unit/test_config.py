from pathlib import Path

import pytest

from llm.config import ConfigError, PipelineConfig, build_config, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_shipped_configs_load_and_validate():
    for path in sorted(CONFIGS.glob("*.yaml")):
        cfg = load_config(path)
        assert isinstance(cfg, PipelineConfig), path


def test_seed_config_matches_reference_numbers():
    cfg = load_config(CONFIGS / "seed-24x1024.yaml")
    assert (cfg.model.layers, cfg.model.hidden_size, cfg.model.attention_heads, cfg.model.vocab_size) == (24, 1024, 16, 50257)
    t = cfg.train
    assert (t.batch_size, t.learning_rate, t.warmup_steps, t.max_steps, t.gradient_clipping) == (512, 1e-4, 10000, 500000, 1.0)
    assert t.grad_accum_steps * t.micro_batch_size * t.num_workers == 512


def test_dotted_overrides_are_typed():
    cfg = load_config(CONFIGS / "demo.yaml", ["train.max_steps=50", "model.dropout=0.1", "name=x",
                                               "data.crawl.start_url=http://127.0.0.1:1/"])
    assert cfg.train.max_steps == 50 and cfg.model.dropout == 0.1 and cfg.name == "x"
    assert cfg.data.crawl.start_url == "http://127.0.0.1:1/"


def test_unknown_key_names_the_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_stepz: 5\n")
    with pytest.raises(ConfigError) as exc:
        load_config(bad)
    assert "train.max_stepz: unknown key" in str(exc.value)
    assert str(bad) in str(exc.value)


def test_negative_learning_rate_names_the_field():
    with pytest.raises(ConfigError) as exc:
        build_config({}, ["train.learning_rate=-1e-3"])
    assert "train.learning_rate" in str(exc.value) and "greater than 0" in str(exc.value)


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="divisible by attention_heads"):
        build_config({"model": {"hidden_size": 100, "attention_heads": 3}})
    with pytest.raises(ConfigError, match="multiple of micro_batch_size"):
        build_config({"train": {"batch_size": 10, "micro_batch_size": 4, "num_workers": 2}})


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)
    with pytest.raises(ConfigError, match="key.sub=value"):
        build_config({}, ["train.max_steps"])


def test_digest_is_stable_and_section_scoped():
    a = build_config({}, ["train.max_steps=10"])
    b = build_config({}, ["train.max_steps=20"])
    assert a.digest("data.normalize") == b.digest("data.normalize")
    assert a.digest("train") != b.digest("train")
    assert a.digest() == build_config({}, ["train.max_steps=10"]).digest()


def test_every_field_is_documented():
    def walk(model_cls, path):
        for name, field in model_cls.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                assert ann.__doc__, f"{path}{name}: section without docstring"
                walk(ann, f"{path}{name}.")
            else:
                assert field.description, f"{path}{name} has no description"

    walk(PipelineConfig, "")


def test_a_key_given_twice_is_refused_naming_it_and_both_lines(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  max_steps: 5\nmodel:\n  layers: 2\ntrain:\n  max_steps: 7\n")
    with pytest.raises(ConfigError) as exc:
        load_config(twice)
    assert str(exc.value) == f"{twice}: line 5: duplicate key 'train' (first given at line 1)"
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        build_config({}, ["eval.prompts={a: 1, a: 2}"])


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_non_finite_numbers_are_refused_naming_the_field(tmp_path, value):
    with pytest.raises(ConfigError, match=r"data.extract.cpu_limit_s: Input should be a finite number"):
        build_config({}, [f"data.extract.cpu_limit_s={value}"])


@pytest.mark.parametrize("name", ["../../../escaped", "..", ".", "a/b", "web\\\\x", "", "x" * 65])
def test_a_source_name_cannot_be_a_path(name):
    with pytest.raises(ConfigError, match=r"data.sources.0.name"):
        build_config({}, [f"data.sources=[{{kind: jsonl, name: '{name}', uri: /tmp}}]"])
    assert build_config({}, ["data.sources=[{kind: jsonl, name: books.v2_x-1, uri: /tmp}]"]).data.sources[0].name


def test_the_processes_executor_is_refused_with_a_cluster_address():
    assert build_config({}).ray.executor == "ray"
    assert build_config({}, ["ray.executor=processes"]).ray.executor == "processes"
    with pytest.raises(ConfigError) as exc:
        build_config({}, ["ray.address=ray://head:10001", "ray.executor=processes"])
    assert "ray:" in str(exc.value) and "ray.executor" in str(exc.value) and "ray://head:10001" in str(exc.value)
    with pytest.raises(ConfigError, match="ray.executor: Input should be 'ray' or 'processes'"):
        build_config({}, ["ray.executor=threads"])
