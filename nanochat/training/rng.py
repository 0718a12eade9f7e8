"""RNG capture and restore (CPU and CUDA generators as base64 text in checkpoint meta), for exact resume."""
import base64

import torch


def _b64(tensor):
    return base64.b64encode(bytes(tensor.cpu().to(torch.uint8).tolist())).decode("ascii")


def _unb64(text):
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def capture_rng(device) -> dict:
    state = {"cpu": _b64(torch.get_rng_state()), "cuda": None}
    if device.type == "cuda":
        state["cuda"] = _b64(torch.cuda.get_rng_state(device))
    return state


def restore_rng(state, device):
    if not state:
        return
    torch.set_rng_state(_unb64(state["cpu"]))
    if device.type == "cuda" and state.get("cuda"):
        torch.cuda.set_rng_state(_unb64(state["cuda"]), device)
