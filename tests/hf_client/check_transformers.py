"""transformers loads a qstore model in both precisions, from the server or from folders.

Usage: python check_transformers.py SERVER REPO
       python check_transformers.py --folders BF16_DIR INT8_DIR

Loads REPO at revision `main` (the uploaded BF16 weights) and at `int8` (bitsandbytes LLM.int8,
configured by the quantization_config the server adds to config.json), or the two folders
`qstore pull` wrote (offline: HF_HUB_OFFLINE=1, nothing but the folders), runs one sentence
through both, and checks that the INT8 model's linear layers really are 8-bit and that its output
agrees with the BF16 model's (cosine of mean-pooled states > 0.99). Needs torch, transformers,
bitsandbytes and accelerate. Exits non-zero with a message on failure.
"""

import os
import sys
import tempfile

folders = sys.argv[1] == "--folders"
if folders:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"  # Nothing listens there: no fallback.
else:
    os.environ["HF_ENDPOINT"] = sys.argv[1]
os.environ["HF_HOME"] = tempfile.mkdtemp()
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import torch  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

if folders:
    high_at, int8_at = (sys.argv[2], {}), (sys.argv[3], {})
else:
    high_at, int8_at = (sys.argv[2], {"revision": "main"}), (sys.argv[2], {"revision": "int8"})
tokenizer = AutoTokenizer.from_pretrained(high_at[0], **high_at[1])
batch = tokenizer(["qstore serves one blob in two precisions"], return_tensors="pt")
high = AutoModel.from_pretrained(high_at[0], **high_at[1])
int8 = AutoModel.from_pretrained(int8_at[0], **int8_at[1], device_map="cpu")
eight_bit = [m for m in int8.modules() if type(m).__name__ == "Linear8bitLt"]
if not eight_bit or any(m.weight.dtype != torch.int8 for m in eight_bit):
    sys.exit("check_transformers: FAIL: the int8 revision did not load as LLM.int8 layers")
with torch.no_grad():
    a = high(**batch).last_hidden_state.float().mean(1)
    b = int8(**batch).last_hidden_state.float().mean(1)
cosine = torch.nn.functional.cosine_similarity(a, b).item()
print(f"check_transformers: main {high.dtype}, int8 {len(eight_bit)} Linear8bitLt layers, cosine {cosine:.4f}")
if cosine <= 0.99:
    sys.exit(f"check_transformers: FAIL: int8 output differs from bf16 (cosine {cosine})")
print("check_transformers: OK")
