"""Stage 1-3a: spec text -> parse tree -> IR -> name-resolved, validated IR."""
