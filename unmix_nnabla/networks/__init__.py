"""The networks: what fixes a model's shapes (layout), UMX and X-UMX from one Branch (model),
NNabla functions chosen per context (ops), and the folded network of loaded weights for
separation (inference)."""
