"""transformers `push_to_hub` to a qstore server, then `from_pretrained` of both precisions.

Usage: python check_push_to_hub.py SERVER TOKEN REPO FOLDER {lfs|xet}

FOLDER is MiniLM as a local repo (config, tokenizer, BF16 model.safetensors). The model is loaded
from it in BF16 and pushed with `model.push_to_hub` and `tokenizer.push_to_hub`: with `lfs`,
HF_HUB_DISABLE_XET=1 (the LFS path); with `xet`, the client as installed (hf_xet must be there, so
the weights go through the Xet CAS). Then REPO is loaded back from the server at `main` and at `int8`: the weights file
at `main` must be byte-identical to what `save_pretrained` writes locally, the INT8 model must have
LLM.int8 layers, and both must agree with the local model (cosine of mean-pooled states > 0.99).
"""

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

from common import sha256

server, token, repo, folder, transport = sys.argv[1:6]
os.environ["HF_ENDPOINT"] = server
os.environ["HF_HOME"] = tempfile.mkdtemp()
if transport == "lfs":
    os.environ["HF_HUB_DISABLE_XET"] = "1"
elif importlib.util.find_spec("hf_xet") is None or "HF_HUB_DISABLE_XET" in os.environ:
    sys.exit("check_push_to_hub: FAIL: the xet transport needs hf_xet and no HF_HUB_DISABLE_XET")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import torch  # noqa: E402
from huggingface_hub import hf_hub_download  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402


def fail(message):
    sys.exit(f"check_push_to_hub: FAIL: {message}")


local = AutoModel.from_pretrained(folder, dtype=torch.bfloat16)
tokenizer = AutoTokenizer.from_pretrained(folder)
local.push_to_hub(repo, token=token, commit_message="push_to_hub from transformers")
tokenizer.push_to_hub(repo, token=token)

saved = tempfile.mkdtemp()
local.save_pretrained(saved)
pushed = hf_hub_download(repo, "model.safetensors", revision="main", token=token)
if sha256(pushed) != sha256(Path(saved, "model.safetensors")):
    fail("the weights served at main differ from what save_pretrained writes")

batch = tokenizer(["qstore serves one blob in two precisions"], return_tensors="pt")
high = AutoModel.from_pretrained(repo, revision="main", token=token)
int8 = AutoModel.from_pretrained(repo, revision="int8", device_map="cpu", token=token)
eight_bit = [m for m in int8.modules() if type(m).__name__ == "Linear8bitLt"]
if not eight_bit or any(m.weight.dtype != torch.int8 for m in eight_bit):
    fail("the int8 revision did not load as LLM.int8 layers")
with torch.no_grad():
    ref = local(**batch).last_hidden_state.float().mean(1)
    a = high(**batch).last_hidden_state.float().mean(1)
    b = int8(**batch).last_hidden_state.float().mean(1)
cos = torch.nn.functional.cosine_similarity
same, close = cos(ref, a).item(), cos(ref, b).item()
print(f"check_push_to_hub ({transport}): main {high.dtype} cosine {same:.5f}, int8 {len(eight_bit)} layers cosine {close:.4f}")
if same < 0.9999 or close <= 0.99:
    fail(f"outputs differ: main {same}, int8 {close}")
print("check_push_to_hub: OK")
