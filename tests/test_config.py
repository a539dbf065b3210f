import pytest

from icae.config import load_config


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(write(tmp_path, "model:\n  mem_size: 16\n"),
                      ["model.position_layout=linspace", "finetune.learning_rate=3e-5",
                       "model.lora_target_modules=[q_proj,k_proj]"])
    assert cfg.model.mem_size == 16
    assert cfg.model.position_layout == "linspace"
    assert cfg.finetune.learning_rate == pytest.approx(3e-5)
    assert cfg.model.lora_target_modules == ["q_proj", "k_proj"]


def test_yaml_exponent_string_is_a_number(tmp_path):
    cfg = load_config(write(tmp_path, "pretrain:\n  learning_rate: 1e-4\n"))
    assert cfg.pretrain.learning_rate == pytest.approx(1e-4)


@pytest.mark.parametrize("text, overrides, needle", [
    ("model:\n  mem_sise: 8\n", [], "model.mem_sise: unknown key; did you mean 'mem_size'"),
    ("", ["modle.mem_size=8"], "modle: unknown key; did you mean 'model'"),
    ("model:\n  mem_size: 12\n", [], "model.mem_size: must be a power of two"),
    ("model:\n  mem_size: eight\n", [], "model.mem_size: expected an integer"),
    ("model:\n  mean_compression_rate: 0.5\n", [], "model.mean_compression_rate: must be >= 1"),
    ("model:\n  position_layout: rope\n", [], "model.position_layout: must be one of"),
    ("model:\n  model_type: t5\n", [], "model.model_type: must be one of"),
    ("model:\n  train_decoder: yes please\n", [], "model.train_decoder: expected true or false"),
    ("model:\n  model_type: llm\n  train_decoder: true\n", [], "model.train_decoder: only applies"),
    ("evaluation:\n  baseline: truncate\n", [], "evaluation.baseline: the truncate"),
    ("evaluation:\n  task: summarise\n", [], "evaluation.task: must be one of"),
    ("finetune:\n  dataset: imdb\n", [], "finetune.dataset: must be one of"),
    ("pretrain:\n  learning_rate: -1\n", [], "pretrain.learning_rate: must be > 0"),
    ("data:\n  pretrain:\n    lm_ratio: 2\n", [], "data.pretrain.lm_ratio: must be in [0, 1]"),
    ("data:\n  pretrain:\n    sources:\n      - {text_field: t}\n", [],
     "data.pretrain.sources[0]: give exactly one of path or hf_dataset"),
    ("model:\n  mem_size: 64\n  max_encoder_tokens: 100\n", [], "model.max_encoder_tokens"),
    ("model: [1, 2]\n", [], "model: expected a mapping"),
    ("- just\n- a list\n", [], "the top level must be a mapping"),
    ("model:\n  mem_size: [8\n", [], "invalid YAML"),
])
def test_validation_errors_name_the_key(tmp_path, text, overrides, needle):
    path = write(tmp_path, text)
    with pytest.raises(ValueError) as info:
        load_config(path, overrides)
    assert needle in str(info.value)
    assert str(path) in str(info.value) or "invalid YAML" in str(info.value) \
        or "top level" in str(info.value)


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="expected key=value"):
        load_config(None, ["model.mem_size"])


def test_resolved_config_round_trips(tmp_path):
    from icae.config import load_config as load, write_resolved_config

    cfg = load(None, ["model.mem_size=32", "run_name=x"])
    path = write_resolved_config(cfg, tmp_path)
    again = load(path)
    assert again == cfg


def test_every_field_has_help():
    import dataclasses

    from icae.config import ExperimentConfig

    def walk(cls, prefix):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{prefix}{f.name}: no help in its field metadata"
            if dataclasses.is_dataclass(f.default_factory if f.default_factory
                                        is not dataclasses.MISSING else None):
                walk(f.default_factory, f"{prefix}{f.name}.")

    walk(ExperimentConfig, "")
    from icae.config import TextSource
    walk(TextSource, "data.pretrain.sources[].")


@pytest.mark.parametrize("override, needle", [
    ("data.pretrain.eval_size=-1", "data.pretrain.eval_size: must be >= 0, got -1"),
    ("data.trajectories.max_observation_tokens=15",
     "data.trajectories.max_observation_tokens: must be >= 16"),
    ("model.lora_dropout=1", "model.lora_dropout: must be in [0, 1), got 1"),
    ("finetune.max_train_seconds=0", "finetune.max_train_seconds: must be > 0 or null"),
    ("pretrain.report_to=[tensorboard]", "pretrain.report_to[0]: must be one of wandb, none"),
    ("model.lora_target_modules=[]", "model.lora_target_modules: must not be empty"),
    ("data.repoqa.position_ratios=[0.5,1.5]", "data.repoqa.position_ratios[1]: must be in [0, 1]"),
    ("model.mean_compression_rate=.inf", "model.mean_compression_rate: must be finite"),
])
def test_bounds_from_field_metadata(override, needle):
    with pytest.raises(ValueError) as info:
        load_config(None, [override])
    assert needle in str(info.value)


def test_show_config_explain(capsys):
    from icae.cli import main

    assert main(["show-config", "--explain", "data.trajectories", "data.trajectories.max_turns=3"]) == 0
    out = capsys.readouterr().out
    assert "data.trajectories.max_turns (int | None) = 3  [default None; >= 1]" in out
    assert "Assistant turns kept per trajectory" in out
    assert "model." not in out
    with pytest.raises(SystemExit):
        main(["show-config", "--explain", "--help"])
    assert "--explain" in capsys.readouterr().out


def test_workflow_config_checks_against_the_schema():
    """What workflow/rules/common.smk runs before Snakemake's validation."""
    from icae.schema import build_schema, check_config

    schema = build_schema()
    config = {"finetune": {"learning_rate": "3e-5", "bf16": "true", "eval_steps": "null"},
              "workflow": {"sweep": {"mem_size": ["8", "16"]}}}
    check_config(config, schema)
    assert config == {"finetune": {"learning_rate": 3e-5, "bf16": True, "eval_steps": None},
                      "workflow": {"sweep": {"mem_size": [8, 16]}}}
    for bad, needle in [
        ({"finetune": {"learning_rat": 1e-4}},
         "invalid config: finetune.learning_rat: unknown key; did you mean 'learning_rate'?"),
        ({"data": {"pretrain": {"sources": [{"pth": "x"}]}}},
         "invalid config: data.pretrain.sources[0].pth: unknown key; did you mean 'path'?"),
        ({"workflow": {"gpu": {"pretrain": -1}}},
         "invalid config: workflow.gpu.pretrain: -1 is less than the minimum of 0"),
        ({"finetune": {"learning_rate": "fast"}},
         "invalid config: finetune.learning_rate: 'fast' is not of type 'number'"),
    ]:
        with pytest.raises(ValueError) as err:
            check_config(bad, schema)
        assert str(err.value) == needle


def test_a_partial_section_keeps_its_own_defaults(tmp_path):
    """finetune's learning rate defaults to 5e-5 (TrainingConfig's is 1e-4), also when the
    file or the overrides give other finetune keys only."""
    path = tmp_path / "c.yaml"
    path.write_text("finetune:\n  max_steps: 2\n")
    assert load_config(path).finetune.learning_rate == 5e-5
    assert load_config(None, ["finetune.max_steps=2"]).finetune.learning_rate == 5e-5
    assert load_config(None, ["pretrain.max_steps=2"]).pretrain.learning_rate == 1e-4
    assert load_config(path, ["finetune.learning_rate=2e-5"]).finetune.learning_rate == 2e-5


def test_compiled_layers_refuse_activation_checkpointing():
    import pytest

    from icae.config import load_config

    with pytest.raises(ValueError, match=r"^pretrain\.compile_layers: cannot be combined with "
                                         r"pretrain\.gradient_checkpointing"):
        load_config(None, ["pretrain.compile_layers=true", "pretrain.gradient_checkpointing=true"])
    load_config(None, ["finetune.compile_layers=true"])
