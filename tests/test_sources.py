"""The fetcher: pinned archives, checksums, atomic unpacking, clear errors."""

import dataclasses

import pytest

from bertkit import sources


def test_model_folder_has_a_complete_checkpoint(minilm_dir):
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"):
        assert (minilm_dir / name).is_file()
    assert (minilm_dir / ".complete").is_file()


def test_second_fetch_is_served_from_the_cache(minilm_dir, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("fetched again")

    monkeypatch.setattr(sources, "_download", no_download)
    assert sources.fetch("all-minilm-l6-v2") == minilm_dir


def test_checksum_mismatch_deletes_the_archive_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTKIT_CACHE", str(tmp_path))
    source = dataclasses.replace(sources.SOURCES["squad-sample"], sha256="0" * 64)
    monkeypatch.setitem(sources.SOURCES, "squad-sample", source)
    archives = tmp_path / "archives" / "squad-sample"
    archives.mkdir(parents=True)
    (archives / "allennlp-0.9.0-py3-none-any.whl").write_bytes(b"not the real wheel")
    with pytest.raises(sources.FetchError, match="has sha256 .* expected 0000"):
        sources.fetch("squad-sample", quiet=True)
    assert not list(archives.iterdir())
    assert not (tmp_path / "squad-sample").exists()  # nothing half-unpacked left behind


def test_unknown_names_are_explained(tmp_path):
    with pytest.raises(KeyError, match="known sources: all-minilm-l6-v2"):
        sources.fetch("bert-base-uncased")
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder.*all-minilm-l6-v2"):
        sources.resolve_pretrained(tmp_path / "missing")
