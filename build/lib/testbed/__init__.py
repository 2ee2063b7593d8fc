"""TCP-server offload testbed: emulate the paper's architectures with namespaces and cgroups.

Every kernel object and file the testbed creates carries the prefix ``PREFIX``.
"""

PREFIX = "tcps"
RUN_DIR = "/run/tcps"
