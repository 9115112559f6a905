"""Recording runs and reading them back: `python -m moth_tf.report`.

* records: what every phase writes into TensorBoard (metadata, final metrics, matrices).
* reader: reads the event files of run directories back into runs (TensorBoard's own reader).
* comparison: the comparison table of those runs (markdown, CSV, JSON).
* figures: drawing (matplotlib, PNG bytes): heat maps, curves, trigger sizes.
* report_figures: which runs' logs feed which figure of the report.
* report: the `python -m moth_tf.report --logdir=DIR` command.

The library writes through `records` while it runs (the MOTH driver's per-step matrices) and
`figures` draws the distance heat maps of every run; everything else here only reads.
"""
