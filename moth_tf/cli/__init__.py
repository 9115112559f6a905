"""The command line: `python -m moth_tf.main` (also `python -m moth_tf.cli` and `python -m moth_tf`).

* main: the absl entry point; flags -> a frozen RunConfig -> phases. The only module that reads
  FLAGS.
* flags: every flag, defined in one function.
* phases: one function per --phase; each loads, checks, calls the library and records.
* console: what the phases print.
* stderr_filter: keeps TensorFlow's native start-up chatter out of the terminal.

Nothing outside this package imports absl flags. Importing the package imports nothing else, so
that the stderr filter can be installed before TensorFlow loads.
"""
