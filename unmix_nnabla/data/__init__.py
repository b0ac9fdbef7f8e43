"""Training data: dataset files and checks (tracks), sampling and batches of every dataset kind
(datasets), synthetic music (synth)."""
