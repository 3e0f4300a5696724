"""The dataset bundle's file format: a plain tar of a manifest and the files it lists,
written and read back with every checksum checked and nothing extracted blindly.

    manifest.json          {"format": "lipsync-dataset-bundle", "version": 1, ...,
                            "files": [{"path", "member", "codec", "bytes", "sha256",
                                       "stored_bytes", "stored_sha256", "mtime_ns"}],
                            "manifest_sha256": sha256 of all the other fields}
    <path> or <path>.xz    each file, stored as is or xz-compressed (``codec``)

The tar is not compressed as a whole: the video inside is H.264 already, and a
plain tar can be listed and checked member by member. A reader accepts only
regular members whose names the manifest lists, and the manifest only plain file
names (no folder, no "..", not hidden), so nothing can land outside the target
folder; links, devices and unlisted members make the whole bundle refused.
What goes into a bundle and what unpacking makes of it is data_utils/bundling.py.
"""
import hashlib
import io
import json
import lzma
import os
import re
import tarfile
import time
from pathlib import Path, PurePosixPath
from typing import Dict, Iterable, Tuple

import numpy as np

from lipsync.core.atomic import atomic_path
from lipsync.core.errors import UserError

BUNDLE_FORMAT = "lipsync-dataset-bundle"
BUNDLE_VERSION = 1
MANIFEST_MEMBER = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 20          # a real manifest is a few kB; more is not ours
PACK_COMMAND = "python data_utils/bundle.py pack"
COPY_AGAIN = "copy the bundle again"

XZ_PRESET = 6                         # preset 9 makes these files < 1% smaller, in twice the time
STORED_SUFFIXES = (".mp4", ".pth")    # compressed already (H.264; a zip of float weights)
# Byte-shuffling (all first bytes of the values, then all second bytes, ...) puts the
# slowly varying high bytes together: landmarks and PCM samples compress ~10% better.
# Features compress better as they are (half their values are exact zeros).
SHUFFLED_FILES = ("landmarks.npy", "aud.wav")
CODECS = ("store", "xz")
SHA256_HEX_DIGITS = 64

_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]*$")


# --------------------------------------------------------------------------- codecs

def _shuffle(data: bytes, itemsize: int, offset: int, restore: bool = False) -> bytes:
    """Bytes ``offset:`` regrouped by byte position within ``itemsize``-byte values (or back)."""
    head, body = data[:offset], data[offset:]
    whole = len(body) // itemsize * itemsize
    values = np.frombuffer(body[:whole], dtype=np.uint8)
    grid = values.reshape(itemsize, -1) if restore else values.reshape(-1, itemsize)
    return head + np.ascontiguousarray(grid.T).tobytes() + body[whole:]


def _value_array(path: Path) -> Tuple[int, int]:
    """(offset, itemsize) of the values of a .npy or PCM16 RIFF/WAVE file, after its header."""
    if path.suffix == ".npy":
        array = np.load(path, mmap_mode="r")
        return int(array.offset), int(array.dtype.itemsize)
    with open(path, "rb") as handle:
        data = handle.read(1 << 16)
    position = 12                     # "RIFF" size "WAVE", then chunks: id, little-endian size, data
    while data[:4] == b"RIFF" and position + 8 <= len(data):
        chunk, size = data[position:position + 4], int.from_bytes(data[position + 4:position + 8], "little")
        if chunk == b"data":
            return position + 8, 2    # PCM16, as preprocessing writes aud.wav
        position += 8 + size + (size & 1)
    return 0, 1


def choose_codec(path: Path) -> Dict:
    """How a file travels: stored as is, or xz (byte-shuffled where that helps)."""
    if path.suffix in STORED_SUFFIXES:
        return {"name": "store"}
    if path.name in SHUFFLED_FILES:
        offset, itemsize = _value_array(path)
        if itemsize > 1:
            return {"name": "xz", "shuffle": itemsize, "offset": offset}
    return {"name": "xz"}


def encode(data: bytes, codec: Dict) -> bytes:
    if codec["name"] == "store":
        return data
    if codec.get("shuffle"):
        data = _shuffle(data, codec["shuffle"], codec["offset"])
    return lzma.compress(data, preset=XZ_PRESET)


def decode(stored: bytes, codec: Dict, size: int) -> bytes:
    """The original bytes; ``size`` bounds the output, so a hostile stream cannot fill the memory."""
    if codec["name"] == "store":
        return stored
    decompressor = lzma.LZMADecompressor()
    data = decompressor.decompress(stored, max_length=size + 1)
    if len(data) != size or not decompressor.eof:
        raise ValueError("the decompressed size differs from the manifest's")
    if codec.get("shuffle"):
        data = _shuffle(data, codec["shuffle"], codec["offset"], restore=True)
    return data


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- the manifest

def seal(manifest: Dict) -> Dict:
    """The manifest with the sha256 of its other fields: damage to the manifest itself shows."""
    body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return {**body, "manifest_sha256": sha256(canonical)}


def is_plain_name(name) -> bool:
    """A file name directly inside the dataset folder: no folder part, not hidden, no '..'."""
    return isinstance(name, str) and bool(_PLAIN_NAME.match(name)) and PurePosixPath(name).name == name \
        and "\\" not in name and ".." not in name


def _entry_is_sound(entry) -> bool:
    return (is_plain_name(entry["path"]) and is_plain_name(entry["member"]) and entry["codec"]["name"] in CODECS
            and int(entry["bytes"]) >= 0 and int(entry["stored_bytes"]) >= 0
            and len(entry["sha256"]) == SHA256_HEX_DIGITS and len(entry["stored_sha256"]) == SHA256_HEX_DIGITS)


def validate_manifest(manifest, bundle: Path) -> Dict:
    """The manifest if it is a sound manifest of the format this version reads; else a UserError."""
    foreign = f"{bundle} is not a dataset bundle"
    if isinstance(manifest, dict) and "manifest_sha256" in manifest \
            and manifest["manifest_sha256"] != seal(manifest)["manifest_sha256"]:
        raise UserError(f"{bundle} is damaged ({MANIFEST_MEMBER} fails its checksum) — {COPY_AGAIN}")
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT or "manifest_sha256" not in manifest:
        raise UserError(f"{foreign} (its {MANIFEST_MEMBER} is not a {BUNDLE_FORMAT} manifest) — make one with: "
                        f"{PACK_COMMAND} dataset/NAME")
    version = manifest.get("version")
    if version != BUNDLE_VERSION:
        raise UserError(f"{bundle} has bundle format version {version}; this version of the project reads "
                        f"version {BUNDLE_VERSION} — unpack it with the project version that packed it")
    try:
        files = manifest["files"]
        paths = [entry["path"] for entry in files]
        sound = (is_plain_name(manifest["name"]) and int(manifest["frames"]) > 0
                 and all(_entry_is_sound(entry) for entry in files)
                 and len(set(paths)) == len(paths) == len({entry["member"] for entry in files}))
    except (KeyError, TypeError, ValueError, AttributeError):
        sound = False
    if not sound:
        raise UserError(f"{foreign} (its {MANIFEST_MEMBER} lists files outside a dataset folder or is incomplete) — "
                        "refusing to unpack it")
    return manifest


# --------------------------------------------------------------------------- writing

def _add_member(tar: tarfile.TarFile, name: str, size: int, mtime_ns: int, handle) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime_ns // 10 ** 9, 0o644
    tar.addfile(info, handle)


def write_bundle(output: Path, fields: Dict, files: Iterable[Path], scratch: Path) -> Dict:
    """Write a bundle of ``files`` (each travels under its own name) to ``output``, atomically.

    ``fields`` go into the manifest beside "files"; compressed copies are made in
    ``scratch`` (a folder on a disk with room for them). Returns the sealed manifest.
    """
    entries, sources = [], []
    for path in files:
        data = path.read_bytes()
        codec = choose_codec(path)
        encoded = encode(data, codec)
        member = path.name + (".xz" if codec["name"] == "xz" else "")
        entries.append({"path": path.name, "member": member, "codec": codec, "bytes": len(data),
                        "sha256": sha256(data), "mtime_ns": path.stat().st_mtime_ns,
                        "stored_bytes": len(encoded), "stored_sha256": sha256(encoded)})
        if codec["name"] == "store":
            sources.append(path)          # added straight from its file: no second copy on disk
        else:
            sources.append(scratch / member)
            sources[-1].write_bytes(encoded)
        del data, encoded
    manifest = seal({"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, **fields, "files": entries})
    text = json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8")
    with atomic_path(output) as temporary, tarfile.open(temporary, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_member(tar, MANIFEST_MEMBER, len(text), time.time_ns(), io.BytesIO(text))
        for entry, source in zip(entries, sources):
            with open(source, "rb") as handle:
                _add_member(tar, entry["member"], entry["stored_bytes"], entry["mtime_ns"], handle)
    return manifest


# --------------------------------------------------------------------------- reading

def _member_kind(member: tarfile.TarInfo) -> str:
    for kind, test in (("symbolic link", member.issym), ("hard link", member.islnk), ("folder", member.isdir),
                       ("device", lambda: member.ischr() or member.isblk()), ("fifo", member.isfifo)):
        if test():
            return kind
    return "special file"


class BundleReader:
    """An open bundle whose members are exactly its manifest's files (checked on opening).

        with BundleReader(path) as bundle:
            for entry in bundle.manifest["files"]:
                bundle.restore(entry, folder / entry["path"])
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path} does not exist — check the path (made by: {PACK_COMMAND} dataset/NAME)")
        try:
            self._tar = tarfile.open(self.path, mode="r:")
        except (tarfile.TarError, OSError) as error:
            raise UserError(f"{self.path} is not a dataset bundle (not a readable tar file: {error}) — "
                            f"make one with: {PACK_COMMAND} dataset/NAME") from None
        try:
            self._members = self._checked_members()
            self.manifest = self._read_manifest()
        except BaseException:
            self._tar.close()
            raise

    def __enter__(self) -> "BundleReader":
        return self

    def __exit__(self, *exc_info) -> None:
        self._tar.close()

    def _checked_members(self) -> Dict[str, tarfile.TarInfo]:
        """Every member by name, if all are regular files with safe names (else a UserError)."""
        try:
            members = self._tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as error:
            raise UserError(f"{self.path} is damaged or truncated ({error}) — {COPY_AGAIN}") from None
        by_name = {}
        for member in members:
            name = member.name
            refuse = f"{self.path} is not a dataset bundle: member {name!r}"
            if name.startswith("/") or PurePosixPath(name).is_absolute():
                raise UserError(f"{refuse} has an absolute path — refusing to unpack it")
            if ".." in PurePosixPath(name).parts or "\\" in name:
                raise UserError(f"{refuse} points outside the dataset folder — refusing to unpack it")
            if not member.isreg():
                raise UserError(f"{refuse} is a {_member_kind(member)}, not a regular file — refusing to unpack it")
            if name in by_name:
                raise UserError(f"{refuse} appears twice — refusing to unpack it")
            by_name[name] = member
        return by_name

    def _read(self, member: tarfile.TarInfo) -> bytes:
        try:
            data = self._tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as error:
            raise UserError(f"{self.path} is damaged or truncated ({member.name}: {error}) — {COPY_AGAIN}") from None
        if len(data) != member.size:
            raise UserError(f"{self.path} is truncated ({member.name} ends early) — {COPY_AGAIN}")
        return data

    def _read_manifest(self) -> Dict:
        members = self._members
        if MANIFEST_MEMBER not in members:
            raise UserError(f"{self.path} is not a dataset bundle (no {MANIFEST_MEMBER} inside) — make one with: "
                            f"{PACK_COMMAND} dataset/NAME")
        if members[MANIFEST_MEMBER].size > MAX_MANIFEST_BYTES:
            raise UserError(f"{self.path} is not a dataset bundle ({MANIFEST_MEMBER} is too large)")
        try:
            manifest = json.loads(self._read(members[MANIFEST_MEMBER]).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise UserError(f"{self.path} is damaged ({MANIFEST_MEMBER} is not valid JSON) — {COPY_AGAIN}") from None
        validate_manifest(manifest, self.path)
        listed = {entry["member"]: entry for entry in manifest["files"]}
        for name in members:
            if name != MANIFEST_MEMBER and name not in listed:
                raise UserError(f"{self.path} is not a dataset bundle: member {name!r} is not in its manifest — "
                                "refusing to unpack it")
        for name, entry in listed.items():
            if name not in members:
                raise UserError(f"{self.path} is damaged or truncated (no {name} inside) — {COPY_AGAIN}")
            if members[name].size != entry["stored_bytes"]:
                raise UserError(f"{self.path} is damaged ({name} has {members[name].size} bytes, the manifest "
                                f"says {entry['stored_bytes']}) — {COPY_AGAIN}")
        return manifest

    def restore(self, entry: Dict, target: Path) -> None:
        """Write the file of manifest ``entry`` to ``target`` with its modification time, checksums checked."""
        member = self._members[entry["member"]]
        stored = self._read(member)
        if sha256(stored) != entry["stored_sha256"]:
            raise UserError(f"{self.path} is damaged ({member.name} fails its checksum) — {COPY_AGAIN}")
        try:
            data = decode(stored, entry["codec"], entry["bytes"])
        except (lzma.LZMAError, ValueError, KeyError, TypeError):
            data = None
        if data is None or sha256(data) != entry["sha256"]:
            raise UserError(f"{self.path} is damaged ({entry['path']} does not decode to its checksum) — "
                            f"{COPY_AGAIN}")
        target.write_bytes(data)
        mtime_ns = int(entry["mtime_ns"])
        os.utime(target, ns=(mtime_ns, mtime_ns))   # feature metadata stamps ave.pth by its mtime
