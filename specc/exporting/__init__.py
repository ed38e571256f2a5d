"""Stage 6: a trained model leaves specc (`specc export`). `settings` checks the request
before torch is imported; `trace` runs torch.export with dynamic dimensions and locates its
refusals; `formats` writes and checks ONNX, pt2 and safetensors; `export` ties them
together. It reads checkpoints through `specc.training.checkpoint`; nothing earlier imports
it."""
