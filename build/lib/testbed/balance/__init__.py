"""Dynamic load balancing between the host and the TCP server (the paper's open problem).

``policy``: the pure decision function; ``controller``: the process that samples, decides
and moves a knob (work split via nftables, or CPU split via cgroups) while traffic flows.
"""
