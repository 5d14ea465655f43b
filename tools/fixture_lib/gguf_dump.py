"""Lists a GGUF file's metadata and tensors as JSON-able data, using the `gguf` Python package."""

from __future__ import annotations

import hashlib

import numpy as np

ARRAY_HEAD = 16  # first items of an array kept in the listing


def _scalar(field, part_index: int):
    import gguf

    part = field.parts[part_index]
    vtype = field.types[-1]
    if vtype == gguf.GGUFValueType.STRING:
        return bytes(part).decode("utf-8", errors="replace")
    value = part.tolist()[0] if hasattr(part, "tolist") else part
    if isinstance(value, float):
        return float(np.float32(value)) if vtype == gguf.GGUFValueType.FLOAT32 else value
    return value


def field_entry(field) -> dict:
    import gguf

    vtype = field.types[0]
    entry: dict = {"type": vtype.name}
    if vtype == gguf.GGUFValueType.ARRAY:
        entry["item_type"] = field.types[-1].name if len(field.types) > 1 else None
        entry["length"] = len(field.data)
        entry["head"] = [_scalar(field, i) for i in field.data[:ARRAY_HEAD]]
        if field.types[-1] != gguf.GGUFValueType.STRING:
            values = [_scalar(field, i) for i in field.data]
            entry["sha256_of_repr"] = hashlib.sha256(repr(values).encode()).hexdigest()
    else:
        entry["value"] = _scalar(field, field.data[0])
    return entry


def dump(path: str) -> dict:
    import gguf

    reader = gguf.GGUFReader(path)
    meta = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        meta[name] = field_entry(field)
    tensors = []
    for t in reader.tensors:
        raw = np.ascontiguousarray(t.data).tobytes()
        tensors.append({"name": t.name, "ne": [int(x) for x in t.shape],
                        "type": t.tensor_type.name, "n_bytes": int(t.n_bytes),
                        "sha256": hashlib.sha256(raw).hexdigest()})
    return {"gguf_version": int(reader.fields["GGUF.version"].parts[-1][0]),
            "n_kv": len(meta), "metadata": meta, "n_tensors": len(tensors), "tensors": tensors}
