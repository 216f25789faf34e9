from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicom_node.cli import main
from dicom_node.config import DEFAULT_CONFIG_TEXT, ConfigError, InferenceSection, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "egfr-node.toml"
    path.write_text(text)
    return path


def test_default_config_text_is_the_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, DEFAULT_CONFIG_TEXT.replace("{data_dir}", str(tmp_path / "d"))), environ={})
    assert config.node.ae_title == "EGFR_NODE"
    assert config.node.port == 11112
    assert config.node.allowed_calling_aets == ()
    assert config.node.require_called_aet is True
    assert config.worker.study_stable_seconds == 30.0
    assert config.destinations == ()
    assert config.database_url == f"sqlite:///{tmp_path / 'd' / 'egfr-node.sqlite3'}"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\nport = 104\n[storage]\ndata_dir = "/x"\n')
    config = load_config(
        path,
        environ={
            "EGFR_NODE_NODE_PORT": "11113",
            "EGFR_NODE_NODE_ALLOWED_CALLING_AETS": "PACS1, PACS2",
            "EGFR_NODE_DATABASE_URL": "postgresql+psycopg://u@h/db",
            "EGFR_NODE_STORAGE_FSYNC": "false",
        },
    )
    assert config.node.port == 11113
    assert config.node.allowed_calling_aets == ("PACS1", "PACS2")
    assert config.database_url == "postgresql+psycopg://u@h/db"
    assert config.storage.fsync is False


@pytest.mark.parametrize(
    ("text", "environ", "key"),
    [
        ('[node]\nport = "eleven"\n', {}, "node.port"),
        ("[node]\nport = 70000\n", {}, "node.port"),
        ('[node]\nae_title = "A\\\\B"\n', {}, "node.ae_title"),
        ('[node]\nae_title = "THIS_TITLE_IS_FAR_TOO_LONG"\n', {}, "node.ae_title"),
        ("[node]\nprot = 1\n", {}, "node.prot"),
        ("[nodes]\nport = 1\n", {}, "nodes"),
        ("[tls]\nenabled = true\n", {}, "tls.certificate"),
        ("[worker]\nstudy_stable_seconds = -1\n", {}, "worker.study_stable_seconds"),
        ('[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "h"\n', {}, "destinations[0].port"),
        ('[[destinations]]\nname = "pacs"\n', {}, r"destinations[0]: needs ae_title, host and port"),
        ('[[destinations]]\nname = "web"\ndicomweb_url = "ftp://x"\n', {}, "destinations[0].dicomweb_url"),
        ('[[destinations]]\nname = "web"\ndicomweb_url = "http://x"\ntoken_file = "/nonexistent"\n', {},
         "destinations[0].token_file"),
        ('[[sources]]\nname = "pacs"\nae_title = "PACS"\nhost = "h"\nport = 104\nretrieve = "ftp"\n', {}, "sources[0].retrieve"),
        ('[[sources]]\nname = "pacs"\nae_title = "PACS"\nhost = "h"\nport = 104\nretrieve = "wado"\n', {},
         "sources[0].dicomweb_url"),
        ('[[sources]]\nname = "web"\ndicomweb_url = "http://x"\n', {}, "sources[0]: retrieve = 'c-move' needs"),
        ('[[sources]]\nname = "a"\ndicomweb_url = "http://x"\nretrieve = "wado"\n'
         '[[sources]]\nname = "a"\ndicomweb_url = "http://y"\nretrieve = "wado"\n', {}, "sources.name"),
        ("", {"EGFR_NODE_NODE_PORT": "abc"}, "node.port"),
        ('[database]\nurl = "not a url"\n', {}, "database.url"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, environ: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_config(write(tmp_path, text), environ=environ)


def test_init_writes_config_data_folder_and_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EGFR_NODE_CONFIG", raising=False)
    assert main(["init", "--data-dir", "data"]) == 0
    assert (tmp_path / "egfr-node.toml").is_file()
    assert (tmp_path / "data" / "archive").is_dir()
    assert (tmp_path / "data" / "egfr-node.sqlite3").is_file()
    config = load_config(tmp_path / "egfr-node.toml", environ={})
    assert config.storage.data_path == tmp_path / "data"
    # a second init keeps the existing file
    (tmp_path / "egfr-node.toml").write_text((tmp_path / "egfr-node.toml").read_text() + "\n# mine\n")
    assert main(["init", "--data-dir", "data"]) == 0
    assert "# mine" in (tmp_path / "egfr-node.toml").read_text()


def test_cli_reports_a_bad_config_by_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    path = write(tmp_path, "[node]\nport = 0\n")
    monkeypatch.setenv("EGFR_NODE_CONFIG", str(path))
    assert main(["queue", "list"]) == 2
    assert "node.port" in capsys.readouterr().err


def test_default_config_documents_every_key(tmp_path: Path) -> None:
    """Every key of every section appears in what `init` writes, so each has its documented default."""
    from dataclasses import fields

    from dicom_node.config import Config, Destination, Source

    text = DEFAULT_CONFIG_TEXT
    for section in fields(Config):
        if section.name in ("source", "destinations", "sources", "training"):
            continue
        assert f"[{section.name}]" in text
        for key in fields(section.default_factory()):
            assert f"\n{key.name} = " in text, f"{section.name}.{key.name} is not in the default config"
    for key in (*fields(Destination), *fields(Source)):
        assert f"# {key.name} = " in text, key.name


def test_the_training_recipe_lives_in_the_node_config(tmp_path: Path) -> None:
    """[training] is accepted beside the node's sections, kept as written for `egfr-node train`,
    and a table that is not one is refused naming it; its values are checked by the training
    package with the same `section.key:` errors."""
    from training.settings import TrainSettings

    config = load_config(write(tmp_path, "[node]\nport = 11113\n[training]\nepochs = 3\nimagenet_weights = '/w.pth'\n"),
                         environ={})
    assert dict(config.training) == {"epochs": 3, "imagenet_weights": "/w.pth"}
    assert TrainSettings.from_mapping(config.training).recipe == "paper"
    assert dict(load_config(write(tmp_path, "[node]\nport = 11113\n"), environ={}).training) == {}
    with pytest.raises(ConfigError, match=r"^training: must be a table"):
        load_config(write(tmp_path, "training = 3\n"), environ={})
    with pytest.raises(ConfigError, match=r"^training\.epochs: must be at least 1, got 0$"):
        TrainSettings.from_mapping(load_config(write(tmp_path, "[training]\nepochs = 0\n"), environ={}).training)


def test_receive_processes_auto_is_one_per_core_where_the_database_can_be_shared(tmp_path: Path) -> None:
    """Issue 30, item 5: init's "auto" receives in one process per core (at most 64); an
    in-memory SQLite cannot be shared between processes, so it keeps one; a count is a count."""
    config = load_config(write(tmp_path, DEFAULT_CONFIG_TEXT.replace("{data_dir}", str(tmp_path / "d"))), environ={})
    assert config.node.receive_processes == "auto"
    assert [config.receive_process_count(cores) for cores in (1, 2, 16, 200)] == [1, 2, 16, 64]
    assert config.receive_process_count() == min(os.cpu_count() or 1, 64)
    memory = load_config(write(tmp_path, '[database]\nurl = "sqlite://"\n'), environ={})
    assert memory.receive_process_count(16) == 1
    three = load_config(write(tmp_path, "[node]\nreceive_processes = 3\n"), environ={})
    assert three.receive_process_count(16) == 3
    from_env = load_config(write(tmp_path, ""), environ={"EGFR_NODE_NODE_RECEIVE_PROCESSES": "5"})
    assert from_env.node.receive_processes == 5 and from_env.receive_process_count(16) == 5
    for bad in ('"many"', "0", "65", "true"):
        with pytest.raises(ConfigError, match="node.receive_processes"):
            load_config(write(tmp_path, f"[node]\nreceive_processes = {bad}\n"), environ={})


def test_the_fold_ensemble_threads_are_the_cores_shared_by_the_running_jobs() -> None:
    """0 (the default): a study alone infers on every core (the five folds: 0.92 s on one core
    of this machine, 0.43 s on two), two jobs at once on half each; a count is kept as set."""
    shared = InferenceSection()
    assert shared.torch_threads == 0
    assert [shared.threads(2), shared.threads(2, running=2), shared.threads(8, running=3), shared.threads(1, running=4)] \
        == [2, 1, 2, 1]
    assert InferenceSection(torch_threads=3).threads(2, running=2) == 3
