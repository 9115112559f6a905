"""`python -m moth_tf` is the same as `python -m moth_tf.main`."""

from moth_tf import main

if __name__ == "__main__":
  main.run_main()
