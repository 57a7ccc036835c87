"""Settings and the model registry: strict, and every error names its key."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from embedstream import registry, registryfile
from embedstream.errors import ConfigError, NotFound
from embedstream.settings import ENV_PREFIX, Settings
from tests.support import documents


def test_settings_from_env_and_overrides() -> None:
    s = Settings.from_env({"EMBEDSTREAM_PORT": "6000", "EMBEDSTREAM_MAX_DEADLINE_S": "2.5"}, port=7000)
    assert s.port == 7000 and s.max_deadline_s == 2.5
    assert Settings.from_env({}).port == 50051


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"EMBEDSTREAM_PORT": "abc"}, "EMBEDSTREAM_PORT"),
        ({"EMBEDSTREAM_PORT": "70000"}, "EMBEDSTREAM_PORT"),
        ({"EMBEDSTREAM_STREAM_WINDOW": "0"}, "EMBEDSTREAM_STREAM_WINDOW"),
        ({"EMBEDSTREAM_REDIS_URL": "http://x"}, "EMBEDSTREAM_REDIS_URL"),
        ({"EMBEDSTREAM_THREADS": "-1"}, "EMBEDSTREAM_THREADS"),
        ({"EMBEDSTREAM_LOG_FORMAT": "xml"}, "EMBEDSTREAM_LOG_FORMAT"),
        ({"EMBEDSTREAM_OTEL_ENDPOINT": "collector:4317"}, "EMBEDSTREAM_OTEL_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "grpc://collector:4317"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        Settings.from_env(env)


def test_the_tracing_endpoint_embedstreams_variable_wins_then_otels_own() -> None:
    generic, traces, ours = "http://generic:4317", "http://traces:4317", "https://ours:4317"
    assert Settings.from_env({}).otel_endpoint == ""
    assert Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": generic}).otel_endpoint == generic
    both = {"OTEL_EXPORTER_OTLP_ENDPOINT": generic, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": traces}
    assert Settings.from_env(both).otel_endpoint == traces
    assert Settings.from_env({**both, "EMBEDSTREAM_OTEL_ENDPOINT": ours}).otel_endpoint == ours
    assert Settings.from_env({**both, "EMBEDSTREAM_OTEL_ENDPOINT": ""}).otel_endpoint == ""  # set empty: off


def test_every_setting_is_in_the_configuration_table() -> None:
    table = documents.table("# Configuration", documents.DOCS / "configuration.md")
    documented = {name for row in table for cell in row for name in re.findall(r"`(EMBEDSTREAM_[A-Z0-9_]+)`", cell)}
    fields = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
    assert fields - documented == set(), "settings missing from docs/configuration.md's table"


def test_settings_repr_hides_the_redis_password() -> None:
    s = Settings.from_env({"EMBEDSTREAM_REDIS_URL": "redis://user:s3cret@host:6379/0"})
    assert "s3cret" not in repr(s) and "user:***@host:6379" in repr(s)


def test_default_thread_count_is_every_core_the_worker_may_use() -> None:
    import os

    # Issue 14: the ceiling is all cores; workers/threads.py drops to one fewer while others are busy.
    assert Settings.from_env({}).torch_threads() == len(os.sched_getaffinity(0))
    assert Settings.from_env({"EMBEDSTREAM_THREADS": "3"}).torch_threads() == 3


def test_builtin_registry_serves_minilm_from_its_package() -> None:
    reg = registry.builtin()
    spec = reg.resolve("")
    assert spec.name == "all-MiniLM-L6-v2" and Path(spec.path, "modules.json").exists()
    assert reg.resolve("sentence-transformers/all-MiniLM-L6-v2") is spec
    with pytest.raises(NotFound, match="nope"):
        reg.resolve("nope")


def test_registry_file_relative_paths_and_aliases(tmp_path: Path) -> None:
    (tmp_path / "models.toml").write_text(
        'default = "b"\n[models.a]\nfamily = "text-dense"\npath = "weights/a"\naliases = ["alpha"]\n'
        '[models.b]\nfamily = "debug"\ndimensions = 4\n'
    )
    reg = registryfile.load(str(tmp_path / "models.toml"))
    assert reg.resolve("").name == "b"
    assert reg.resolve("alpha").path == str(tmp_path / "weights/a")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[models]\n", "at least one model"),
        ('[models.a]\nfamily = "sparkly"\npath = "x"\n', "models.a.family"),
        ('[models.a]\nfamily = "text-dense"\n', "models.a.path"),
        ('[models.a]\nfamily = "text-dense"\npath = "x"\ncolour = 1\n', "models.a: unknown key"),
        ('[models.a]\nfamily = "text-dense"\npath = "x"\nmax_batch_tokens = -5\n', "models.a.max_batch_tokens"),
        ('[models.a]\nfamily = "text-dense"\npath = "x"\ndevice = "tpu"\n', "models.a.device"),
        ('[models.a]\nfamily = "text-dense"\npath = "x"\ndtype = "int3"\n', "models.a.dtype"),
        ('[models.a]\nfamily = "debug"\n', "models.a.dimensions"),
        ('default = "z"\n[models.a]\nfamily = "debug"\ndimensions = 2\n', "default 'z'"),
        ('[models.a]\nfamily = "text-dense"\npath = "package:no_such_pkg/x"\n', "no_such_pkg"),
        ('[models."a b"]\nfamily = "debug"\ndimensions = 2\n', "models.a b"),
        ("not toml [", "registry"),
        ('[models.a]\nfamily = "text-dense"\npath = "x"\nmatryoshka_dimensions = [0]\n', "a.matryoshka_dimensions"),
        ('[models.a]\nfamily = "sparse"\npath = "x"\nmatryoshka_dimensions = [8]\n', "a.matryoshka_dimensions"),
        ('[models.a]\nfamily = "text-dense"\npath = "x"\nprompts = { q = 1 }\n', "models.a.prompts"),
        ('[models.a]\nfamily = "rerank"\npath = "x"\nprompts = { q = "q: " }\n', "models.a.prompts"),
        ('[models.a]\nfamily = "text-dense"\npath = "x"\ndefault_prompt = "q"\n', "models.a.default_prompt"),
        ('[models.a]\nfamily = "text-dense"\npath = "x"\nquery_prompt = "q"\n', "models.a.query_prompt"),
        ('[models.a]\nfamily = "text-dense"\npath = "x"\nquantization_range = 0\n', "a.quantization_range"),
        ('[models.a]\nfamily = "text-dense"\npath = "x"\npooling = "median"\n', "models.a.pooling"),
        ('[models.a]\nfamily = "image-text"\npath = "x"\nbackend = "onnx"\n', "models.a.backend"),
        ('[models.a]\nfamily = "text-dense"\npath = "x"\nnormalize = "yes"\n', "models.a.normalize"),
        ('[models.a]\nfamily = "text-dense"\npath = "x"\nversion = 3\n', "models.a.version"),
        ('[models.a]\nfamily = "text-dense"\npath = "hf:"\n', "models.a.path"),
    ],
)
def test_bad_registry_names_model_and_key(tmp_path: Path, text: str, where: str) -> None:
    (tmp_path / "m.toml").write_text(text)
    with pytest.raises(ConfigError) as err:
        registryfile.load(str(tmp_path / "m.toml"))
    assert where in str(err.value)


def test_registry_family_options(tmp_path: Path) -> None:
    (tmp_path / "m.toml").write_text(
        '[models.e5]\nfamily = "text-dense"\npath = "hf:intfloat/e5-small-v2"\nversion = "v2"\n'
        'prompts = { query = "query: ", document = "passage: ", sts = "" }\ndefault_prompt = "sts"\n'
        "matryoshka_dimensions = [128, 256, 128]\nquantization_range = 0.25\n"
        '[models.rr]\nfamily = "rerank"\npath = "rr"\n'
    )
    reg = registryfile.load(str(tmp_path / "m.toml"))
    e5, rr = reg.resolve("e5"), reg.resolve("rr")
    assert e5.path == "hf:intfloat/e5-small-v2" and e5.version == "v2"
    assert e5.matryoshka_dimensions == (256, 128) and e5.quantization_range == 0.25
    assert (e5.prompt_for("query", ""), e5.prompt_for("document", ""), e5.prompt_for("", "")) == (
        "query",
        "document",
        "sts",
    )
    assert e5.prompt_for("query", "sts") == "sts" and len(e5.output_types) == 6
    assert rr.output_types == ("float32",) and not rr.dense and not rr.images
