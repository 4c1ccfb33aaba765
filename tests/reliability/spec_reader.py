"""A second reader of wsn's files, written from docs/CHECKPOINT.md alone (sections 1, 2, 5, 6 and 8),
without importing wsncli: it checks the container layout, every checksum, the metadata checksum, the
HMAC, the record digests and (digest version 3) the subnetwork digest of a checkpoint, and the
checksums, whole-file sha256 and HMAC of a `.resume` snapshot. The masks of a wsn checkpoint are a
`.wsnm` file, a format of its own (docs/FORMAT.md): they are decoded with its reference reader,
`formats`. Used by tests/reliability/test_spec_reader.py; its failures name the rule that broke.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct

import numpy as np

NUMPY = {"F32": "<f4", "I64": "<i8", "I32": "<i4", "U8": "|u1"}
RECORD_META = ("benchmark", "n_tasks", "image_size", "channels", "method")
RECORD_TASK = (
    "task",
    "order",
    "n_classes",
    "classes",
    "capacity",
    "accuracy",
    "n_test",
    "preprocess",
    "digest_version",
    "subnet_digest",
    "outputs_digest",
    "data_digest",
    "accuracy_row",
    "input_dtype",
)


class SpecError(Exception):
    pass


def tensor_sha256(arr: np.ndarray, zero_d_as: list | None = None) -> str:
    """Section 5: sha256 of f"{dtype.str}{list(shape)}" (the stored shape), then the C-order bytes."""
    arr = np.asarray(arr)
    shape = list(arr.shape) if arr.ndim or zero_d_as is None else zero_d_as
    h = hashlib.sha256(f"{arr.dtype.str}{shape}".encode("ascii"))
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def auth_message(format_name: str, version: int, fields: dict[str, str]) -> bytes:
    """Section 5: the lines format, version, `<key>=<sha256 hex of the value>` in sorted key order."""
    lines = [format_name, str(version)]
    lines += [f"{k}={hashlib.sha256(fields[k].encode('utf-8')).hexdigest()}" for k in sorted(fields)]
    return "\n".join(lines).encode("utf-8")


def read_container(raw: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """Section 1: 8-byte N, N bytes of JSON, then the tensors back to back; (metadata, arrays)."""
    if len(raw) < 8:
        raise SpecError("shorter than 8 bytes")
    (n,) = struct.unpack_from("<Q", raw)
    if n > 16 << 20 or 8 + n > len(raw):
        raise SpecError("header length out of bounds")
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    metadata = header.pop("__metadata__")
    data = raw[8 + n :]
    arrays, end = {}, 0
    for name, entry in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        if set(entry) != {"dtype", "shape", "data_offsets"} or entry["dtype"] not in NUMPY:
            raise SpecError(f"bad entry {name}")
        begin, stop = entry["data_offsets"]
        dtype = np.dtype(NUMPY[entry["dtype"]])
        if begin != end or stop - begin != int(np.prod(entry["shape"], dtype=np.int64)) * dtype.itemsize:
            raise SpecError(f"tensor {name} is not where its offsets say")
        arrays[name] = np.frombuffer(data[begin:stop], dtype).reshape(entry["shape"])
        end = stop
    if end != len(data):
        raise SpecError("the tensors do not end where the file ends")
    return metadata, arrays


def _check_sums(metadata: dict, arrays: dict, key: bytes | None, fields: tuple[str, ...]) -> None:
    sums = json.loads(metadata["checksums"])
    if set(sums) != set(arrays):
        raise SpecError("the checksum table does not list exactly the tensors")
    for name, arr in arrays.items():
        if tensor_sha256(arr) != sums[name]:
            raise SpecError(f"tensor {name} fails its checksum")
    message = auth_message(metadata["format"], int(metadata["version"]), {k: metadata[k] for k in fields})
    if key is not None and hmac.new(key, message, hashlib.sha256).hexdigest() != metadata.get("hmac"):
        raise SpecError("the HMAC does not verify")
    if "sha256" in metadata and hashlib.sha256(message).hexdigest() != metadata["sha256"]:
        raise SpecError("the whole-file sha256 fails")


def canonical(value) -> str:
    """Section 6, the record digest's value encoding."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "f" + struct.pack(">d", value).hex()
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=True)
    if isinstance(value, list):
        return "[" + ",".join(canonical(v) for v in value) + "]"
    return "{" + ",".join(f"{json.dumps(k, ensure_ascii=True)}:{canonical(value[k])}" for k in sorted(value)) + "}"


DEFAULTS = {"digest_version": 3, "accuracy_row": []}  # section 3: an absent field takes its default (else null)


def _as_typed(record: dict) -> dict:
    """Section 6: a value is written as its schema type says: an absent field as its default
    (section 3), the float fields (`capacity`, `accuracy`, `accuracy_row`'s entries,
    `preprocess.scale`) as floats even when the JSON number is an integer."""
    out = {**DEFAULTS, **record}

    def f(v):
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v

    for key in ("capacity", "accuracy"):
        out[key] = f(out.get(key))
    if isinstance(out.get("accuracy_row"), list):
        out["accuracy_row"] = [f(v) for v in out["accuracy_row"]]
    if isinstance(out.get("preprocess"), dict):  # `padding` absent: 0 (section 3)
        out["preprocess"] = {"padding": 0, **out["preprocess"], "scale": f(out["preprocess"].get("scale"))}
    return out


def record_digest(meta: dict, record: dict) -> str:
    record = _as_typed(record)
    lines = ["wsn-record-digest 1"]
    lines += [f"{k}={canonical(meta.get(k))}" for k in RECORD_META]
    lines += [f"task.{k}={canonical(record.get(k))}" for k in RECORD_TASK]
    return hashlib.sha256("\n".join(lines).encode("ascii")).hexdigest()


def subnet_digest_v3(meta: dict, arrays: dict, task: int, masks: dict[str, np.ndarray] | None) -> str:
    """Section 6, digest version 3, from the file's tensors: each layer's mask bits (packbits) and
    masked weights (finetune: the whole weights), then every tensor `<kind>/<task>/...` but `pred/`,
    sorted by name, as `name:dtype[shape];` and its bytes."""
    h = hashlib.sha256()
    for layer in meta["layers"]:
        weight = arrays[f"layer/{layer['name']}/weight"]
        if masks is None:
            h.update(np.ascontiguousarray(weight).tobytes())
        else:
            mask = masks[layer["name"]].reshape(-1)
            h.update(np.packbits(mask).tobytes())
            h.update(np.ascontiguousarray(weight.reshape(-1)[mask]).tobytes())
    owned = sorted(n for n in arrays if n.split("/")[1:2] == [str(task)] and not n.startswith("pred/"))
    for name in owned:
        arr = arrays[name]
        h.update(f"{name}:{arr.dtype.str}{list(arr.shape)};".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def verify_checkpoint(raw: bytes, key: bytes | None = None) -> dict:
    """Every check of sections 1, 2, 5 and 6 this reader can make from the file alone; the meta."""
    metadata, arrays = read_container(raw)
    if metadata.get("format") != "wsn-checkpoint" or metadata.get("version") not in ("2", "3"):
        raise SpecError("not a wsn checkpoint of version 2 or 3")
    _check_sums(metadata, arrays, key, ("checksums", "meta", "meta_sha256"))
    if hashlib.sha256(metadata["meta"].encode("utf-8")).hexdigest() != metadata["meta_sha256"]:
        raise SpecError("meta fails meta_sha256")
    meta = json.loads(metadata["meta"])
    masks = None
    if "masks" in arrays:
        import formats  # the .wsnm reference reader (docs/FORMAT.md)

        packed = formats.unpack(arrays["masks"].tobytes())
        masks = {
            t: {l.name: np.asarray(l.masks[i], bool) for l in packed.layers} for i, t in enumerate(packed.task_ids)
        }
    for record in meta["tasks"]:
        if metadata["version"] == "3" and record_digest(meta, record) != record["record_digest"]:
            raise SpecError(f"task {record['task']}: record digest fails")
        if record.get("digest_version") == 3:
            mine = subnet_digest_v3(meta, arrays, record["task"], None if masks is None else masks[record["task"]])
            if mine != record["subnet_digest"]:
                raise SpecError(f"task {record['task']}: subnetwork digest fails")
    return meta


def verify_snapshot(raw: bytes, key: bytes | None = None) -> dict:
    """Section 8: format wsn-snapshot version 2, checksums, sha256 and HMAC; its identity and state."""
    metadata, arrays = read_container(raw)
    if metadata.get("format") != "wsn-snapshot" or metadata.get("version") != "2":
        raise SpecError("not a wsn snapshot of version 2")
    _check_sums(metadata, arrays, key, ("checksums", "identity", "state"))
    return {"identity": json.loads(metadata["identity"]), "state": json.loads(metadata["state"]), "arrays": arrays}
