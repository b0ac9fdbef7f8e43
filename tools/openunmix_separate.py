"""open-unmix-pytorch's separation, timed, for tools/benchmark.py (runs in an interpreter
with torch and openunmix 1.3.0; no module of this project is imported):

    PYTHON tools/openunmix_separate.py SECONDS AUDIO.npy [THREADS]

Separates with 4 full-size UMX targets (umxhq's shapes, random weights), niter 1. Prints one
JSON line: model load and separation seconds.
"""
import json
import sys
import time
import types

sys.modules.setdefault("torchaudio", types.ModuleType("torchaudio"))  # not needed to separate

import numpy as np  # noqa: E402
import torch  # noqa: E402
from openunmix import model  # noqa: E402


def main():
    seconds, path = float(sys.argv[1]), sys.argv[2]
    audio = np.load(path)
    torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
    torch.manual_seed(0)
    targets = ["vocals", "drums", "bass", "other"]
    start = time.perf_counter()
    models = {t: model.OpenUnmix(nb_bins=2049, nb_channels=2, hidden_size=512,
                                 max_bin=1487).eval() for t in targets}
    separator = model.Separator(target_models=models, niter=1, residual=False, n_fft=4096,
                                n_hop=1024, nb_channels=2, sample_rate=44100.0,
                                wiener_win_len=300).eval()
    load = time.perf_counter() - start
    with torch.no_grad():
        start = time.perf_counter()
        separator(torch.as_tensor(audio.T[None]))
        total = time.perf_counter() - start
    print(json.dumps({"load": load, "separate": total, "seconds": seconds}))


if __name__ == "__main__":
    main()
