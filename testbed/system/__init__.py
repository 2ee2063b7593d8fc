"""The machine's mechanisms: namespaces and links (backends), cgroups, processes in nodes,
the journal of what was made (state), bringing a testbed up and down, the service plan and
its start, and cleaning up after a crash."""
