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
