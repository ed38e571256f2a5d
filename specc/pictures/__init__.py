"""The pictures: `dataflow` draws a checked model instance as a Graphviz graph
(`specc graph`), `curves` draws the metrics of run folders (`specc plot`), `runs` reads
those folders' `metrics.jsonl`. It reads what the shape checker and the runner leave
behind and imports no stage after the checker; no stage imports it (the CLI and the API
do, lazily). matplotlib and graphviz are optional extras (`extras`)."""
