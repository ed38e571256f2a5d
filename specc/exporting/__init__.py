"""The last stage: a trained model leaves specc (`specc export`). `settings` checks the
request before torch is imported; `trace` runs torch.export with dynamic dimensions and
locates its refusals; `formats` writes and checks ONNX, pt2 and safetensors; `export` ties
them together. It reads checkpoints through `specc.training.checkpoint`; no stage imports
it (the CLI and the API do, lazily)."""
