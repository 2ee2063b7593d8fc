"""Errors the testbed reports to its user: each says what was wrong and what to do."""


class TestbedError(Exception):
    """A problem the user can act on; the CLI prints it as one line, without a traceback."""

    __test__ = False  # not a pytest test class despite the name


class SpecError(TestbedError):
    """A topology or experiment description is malformed or impossible on this machine."""


class KernelFeatureMissing(TestbedError):
    """The running kernel cannot do what was asked (netem, a cgroup controller, ...)."""
