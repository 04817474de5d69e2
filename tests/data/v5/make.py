# Writes the version-5 fixture's input: an embedding that is not quantized (a wide float chunk,
# coarse tables); a weight of uniform values with one column four times larger (int8 values
# spread evenly over ±32, none rare: a coarse table); a weight whose every other row holds an
# outlier (rows of two kinds: a table per group of rows).
import json, struct, numpy as np
rng = np.random.default_rng(2027)
def bf16(a):
    b = a.astype(np.float32).view(np.uint32)
    b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    return b.astype(np.uint16)
emb = rng.normal(size=(128, 160)) * 0.3
up = rng.uniform(-1, 1, size=(64, 512)) * 0.05
up[:, 3] = 0.2
down = rng.standard_t(3, size=(32, 1024)) * 0.02
down[::2, 5] = 40.0
tensors = {"model.embed_tokens.weight": emb, "model.layers.0.mlp.up_proj.weight": up, "model.layers.0.mlp.down_proj.weight": down}
header, data = {"__metadata__": {"format": "pt"}}, b""
for name, a in tensors.items():
    raw = bf16(a).tobytes()
    header[name] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [len(data), len(data) + len(raw)]}
    data += raw
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
open("model.safetensors", "wb").write(struct.pack("<Q", len(h)) + h + data)
