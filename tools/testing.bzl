"""moth_py_test: one pytest module as one Bazel py_test.

    moth_py_test(name = "test_models", srcs = ["test_models.py"])

runs `pytest -q tests/test_models.py` through //tools:pytest_runner.py with the environment's
python3 (tools/python_configure.bzl). `srcs[0]` is the module pytest runs; further srcs, deps and
data are what it imports or reads. Slow modules pass `slow = True`, which tags them "slow" (and
makes them size "large" unless `size` is given) so that `bazel test --test_tag_filters=-slow //...`
leaves them out (.ci/run does).
"""

def moth_py_test(name, srcs, deps = [], data = [], size = None, slow = False, tags = [], **kwargs):
    if size == None:
        size = "large" if slow else "medium"
    native.py_test(
        name = name,
        srcs = ["//tools:pytest_runner.py"] + srcs,
        main = "//tools:pytest_runner.py",
        args = ["$(rootpath %s)" % srcs[0]],
        deps = deps,
        data = data,
        size = size,
        tags = tags + (["slow"] if slow else []),
        python_version = "PY3",
        srcs_version = "PY3",
        # No generated __init__.py files: pytest imports tests/ modules by file (rootdir-relative
        # "prepend" mode), as it does outside Bazel.
        legacy_create_init = False,
        **kwargs
    )

def check_every_test_module_has_a_target():
    """Fails loading the package if a test_*.py in it has no moth_py_test running it.

    Call at the end of a BUILD file; keeps `bazel test //...` from silently skipping a new module.
    """
    run = {}
    for rule in native.existing_rules().values():
        if rule["kind"] == "py_test":
            for arg in rule.get("args", []):
                run[arg] = True
    missing = [
        f
        for f in native.glob(["test_*.py"])
        if "$(rootpath %s)" % f not in run
    ]
    if missing:
        first = missing[0]
        example = 'moth_py_test(name = "%s", srcs = ["%s"], deps = _DEPS)' % (first[:-3], first)
        fail("%s: no moth_py_test runs %s; add one line per module, e.g. %s" % (
            native.package_name(),
            ", ".join(missing),
            example,
        ))
