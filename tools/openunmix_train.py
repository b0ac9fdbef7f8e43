"""open-unmix-pytorch's training step, timed, for tools/benchmark.py (runs in an interpreter
with torch and openunmix 1.3.0; no module of this project is imported):

    PYTHON tools/openunmix_train.py STEPS [THREADS]

Its train.py step: STFT magnitudes of mixture and target, OpenUnmix in training mode, MSE,
Adam, on random data (batch 16 x 6 s). Prints one JSON line: seconds per step.
"""
import json
import sys
import time
import types

sys.modules.setdefault("torchaudio", types.ModuleType("torchaudio"))  # not needed here

import torch  # noqa: E402
from openunmix import model, transforms  # noqa: E402


def main():
    steps = int(sys.argv[1])
    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
    torch.manual_seed(0)
    stft, _ = transforms.make_filterbanks(n_fft=4096, n_hop=1024, sample_rate=44100.0)
    encoder = torch.nn.Sequential(stft, model.ComplexNorm(mono=False))
    unmix = model.OpenUnmix(nb_bins=2049, nb_channels=2, hidden_size=512, max_bin=1487).train()
    optimizer = torch.optim.Adam(unmix.parameters(), lr=1e-3, weight_decay=1e-5)
    x, y = torch.randn(16, 2, 6 * 44100), torch.randn(16, 2, 6 * 44100)

    def step():
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(unmix(encoder(x)), encoder(y))
        loss.backward()
        optimizer.step()
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    print(json.dumps({"model": "open-unmix-pytorch", "processes": 1, "step_s": seconds,
                      "samples_per_s": 16 / seconds}))


if __name__ == "__main__":
    main()
