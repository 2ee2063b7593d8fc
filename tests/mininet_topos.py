"""Small Mininet ``Topo`` classes for the bring-your-own-topology tests (and as examples).

    sudo python -m testbed up tests.mininet_topos:TwoTier -p hosts=2 \
        --role client=h1 --role tcpserver=t1 --role host=h2,h3
"""

from mininet.topo import Topo


class TwoTier(Topo):
    """h1 --s1-- t1 --s2-- h2..h<hosts+1>: a client switch and a SAN switch around a front node."""

    def build(self, hosts: int = 2, san_bw: float | None = None) -> None:  # Mininet calls build()
        h1, t1 = self.addHost("h1"), self.addHost("t1", cpu=0.1)
        s1, s2 = self.addSwitch("s1"), self.addSwitch("s2")
        self.addLink(h1, s1)
        self.addLink(s1, t1)
        self.addLink(t1, s2, bw=san_bw)
        for i in range(hosts):
            self.addLink(self.addHost(f"h{i + 2}"), s2, bw=san_bw)


# Mininet's own convention for `--custom FILE --topo NAME[,ARG...]`
topos = {"twotier": TwoTier}


class Star(Topo):
    """c1 --s1-- ts --s2-- h1, h2: node names that are none of the testbed's own."""

    def build(self) -> None:  # Mininet calls build()
        c1, ts = self.addHost("c1"), self.addHost("ts")
        s1, s2 = self.addSwitch("s1"), self.addSwitch("s2")
        self.addLink(c1, s1)
        self.addLink(ts, s1)
        self.addLink(ts, s2)
        for h in ("h1", "h2"):
            self.addLink(self.addHost(h), s2)


class Placed(Topo):
    """Mininet cluster edition's placement: ``server=`` names the machine a host runs on
    (here h2 on machine ``b``, given with ``up --machine b=root@ADDRESS``)."""

    def build(self) -> None:  # Mininet calls build()
        h1, t1, h2 = self.addHost("h1"), self.addHost("t1"), self.addHost("h2", server="b")
        self.addLink(h1, t1)
        self.addLink(t1, h2)
