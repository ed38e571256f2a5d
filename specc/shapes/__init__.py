"""Stage 3b: shape checking. The IR run on meta tensors -> checked ``ModelInstance``s."""
