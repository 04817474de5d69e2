# Writes the version-2 fixture's input: BF16 tensors whose int8 values are mostly zero in half
# the rows (so a chunk holds over 16Ki whole values, coded on 32 lanes), an ordinary weight,
# and an embedding that is not quantized (a wide float chunk).
import json, struct, numpy as np
rng = np.random.default_rng(2026)
def bf16(a):
    b = a.astype(np.float32).view(np.uint32)
    b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    return b.astype(np.uint16)
w = rng.standard_t(3, size=(256, 512)) * 0.02
w[::2, 7] = 40.0  # an outlier in every other row: its other values quantize to 0
up = rng.standard_t(4, size=(96, 256)) * 0.05
emb = rng.normal(size=(128, 160)) * 0.3
tensors = {"model.embed_tokens.weight": emb, "model.layers.0.mlp.down_proj.weight": w, "model.layers.0.mlp.up_proj.weight": up}
header, data = {"__metadata__": {"format": "pt"}}, b""
for name, a in tensors.items():
    raw = bf16(a).tobytes()
    header[name] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [len(data), len(data) + len(raw)]}
    data += raw
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
open("model.safetensors", "wb").write(struct.pack("<Q", len(h)) + h + data)
