"""Model FLOPs utilisation: achieved training FLOP/s over the hardware's dense peak.

FLOPs per token are GPT.flops_per_token (6N + 12*L*H*Q*T). Peaks are dense (no 2:4 sparsity) tensor-core
figures from the vendors' datasheets, in FLOP/s per device, by compute precision. fp32 means plain
IEEE fp32 (PyTorch's default, TF32 off). A device not in the table, and any CPU, has no peak: MFU is
then unavailable (None) rather than a guess.
"""

from __future__ import annotations

import torch

T = 1e12

#: name fragment (lower case, matched against torch.cuda.get_device_name) -> peak FLOP/s by precision.
#: Longer fragments are tried first so that "h100 pcie" wins over "h100".
DEVICE_PEAKS: dict[str, dict[str, float]] = {
    "h200": {"bf16": 989 * T, "fp16": 989 * T, "fp32": 67 * T},
    "h100 nvl": {"bf16": 835 * T, "fp16": 835 * T, "fp32": 60 * T},
    "h100 pcie": {"bf16": 756 * T, "fp16": 756 * T, "fp32": 51 * T},
    "h100": {"bf16": 989 * T, "fp16": 989 * T, "fp32": 67 * T},  # SXM
    "gh200": {"bf16": 989 * T, "fp16": 989 * T, "fp32": 67 * T},
    "a100": {"bf16": 312 * T, "fp16": 312 * T, "fp32": 19.5 * T},
    "l40s": {"bf16": 362 * T, "fp16": 362 * T, "fp32": 91.6 * T},
    "l4": {"bf16": 121 * T, "fp16": 121 * T, "fp32": 30.3 * T},
    "a10g": {"bf16": 70 * T, "fp16": 70 * T, "fp32": 35 * T},
    "v100": {"fp16": 125 * T, "fp32": 15.7 * T},
}


def device_peak_flops(device: torch.device, precision: str) -> float | None:
    """Dense peak FLOP/s of one `device` at `precision` ("fp32", "bf16", "fp16"); None when unknown."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return peak_flops_for_name(torch.cuda.get_device_name(device), precision)


def peak_flops_for_name(name: str, precision: str) -> float | None:
    """Peak FLOP/s for a device called `name` (as the driver reports it); None when not in the table."""
    lowered = name.lower()
    for fragment in sorted(DEVICE_PEAKS, key=len, reverse=True):
        if fragment in lowered:
            return DEVICE_PEAKS[fragment].get(precision)
    return None


class ImplausibleMFU(ValueError):
    """An MFU above 100%: the FLOP count or the device peak is wrong. `value` is the reading."""

    def __init__(self, message: str, value: float):
        super().__init__(message)
        self.value = value


def mfu(flops_per_token: float, tokens_per_s: float, devices: int, peak_per_device: float | None) -> float | None:
    """Fraction of peak (0..1) achieved by `devices` devices processing `tokens_per_s` tokens per second
    in total; None when the peak is unknown. Above 1 is impossible and means the FLOP count or the peak
    is wrong, so it raises `ImplausibleMFU` instead of returning a number that would be logged."""
    if peak_per_device is None:
        return None
    value = flops_per_token * tokens_per_s / (peak_per_device * devices)
    if value > 1.0:
        raise ImplausibleMFU(
            f"MFU {value:.1%} is above 100%: {flops_per_token:.3g} FLOPs/token x {tokens_per_s:.3g} tokens/s "
            f"over {devices} x {peak_per_device:.3g} FLOP/s; the FLOP count or the device peak is wrong",
            value,
        )
    return value
