"""The nftables rules of one daemon, as libnftables JSON commands (pure functions).

A daemon owns two tables of one name, `ip <name>` (NAT, isolation, the
loopback guard) and `bridge <name>` (anti-spoofing on guests' bridge ports);
nothing here touches any other. It owns them in the host's network
namespace and in each namespace of its own (an address space whose bridges
reach the host by an uplink, a veth pair): a Ruleset is one namespace's.
Its chains and sets are fixed; its rules follow the networks and published
ports, and the elements of its sets the guests' ports (anti-spoofing pins).
`rebuild_commands` makes the whole table afresh (at start, or when what is
in the kernel is in doubt); after that, `update_commands` deletes exactly
the rules that went (by the handle the kernel gave each) and adds the new
ones, and `element_commands` does the same for set elements, in one
transaction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

Command = dict[str, Any]
Expr = list[dict[str, Any]]

FAMILIES = ("ip", "bridge")
LOOPBACK_NET = {"prefix": {"addr": "127.0.0.0", "len": 8}}


@dataclass
class PortForward:
    protocol: str  # tcp | udp
    host_ip: str  # "" or "0.0.0.0" = every address
    host_port: int
    guest_ip: str
    guest_port: int


@dataclass
class BridgeRules:
    name: str
    subnet: str
    internal: bool = False


@dataclass
class PortPin:
    """What a guest may send from one bridge port (its tap): its endpoint's
    MAC, and as source only its endpoint's addresses."""

    port: str
    mac: str
    ips: list[str] = field(default_factory=list)  # IPv4, link-local ones included
    ips6: list[str] = field(default_factory=list)  # IPv6 (fe80::/10 is always allowed)


@dataclass
class Uplink:
    """A namespace's veth pair to the host, as the host sees it: its host end
    (`name`, holding `address`) and the pair's subnet."""

    name: str
    subnet: str
    address: str


@dataclass
class Ruleset:
    bridges: list[BridgeRules] = field(default_factory=list)
    forwards: list[PortForward] = field(default_factory=list)
    pins: list[PortPin] = field(default_factory=list)
    # In the host's namespace: the uplinks of the namespaces, and the range
    # their subnets come from.
    uplinks: list[Uplink] = field(default_factory=list)
    transfer_range: str = ""
    # In a namespace: its end of the uplink ("" in the host's).
    uplink: str = ""


@dataclass(frozen=True)
class Chain:
    name: str
    type: str
    hook: str
    prio: int
    family: str = "ip"


# Priorities as nft names them: raw -300, dstnat -100, filter 0, srcnat 100.
# `guard` runs at raw, before conntrack: the replies of host-to-guest
# connections that get a 127.0.0.0/8 address back (de-NAT, at dstnat) still
# carry the bridge's address there, so only forged packets match it.
CHAINS = (
    Chain("guard", "filter", "prerouting", -300),
    Chain("postrouting", "nat", "postrouting", 100),
    Chain("forward", "filter", "forward", 0),
    Chain("input", "filter", "input", 0),
    Chain("prerouting", "nat", "prerouting", -100),
    Chain("output", "nat", "output", -100),
    # Frames as they enter the bridge from a port, before it learns or forwards.
    Chain("antispoof", "filter", "prerouting", -200, "bridge"),
)
FAMILY_OF = {c.name: c.family for c in CHAINS}


@dataclass(frozen=True)
class PinSet:
    name: str
    type: list[str]


# The anti-spoofing pins are elements of these sets, not rules of their own:
# a pin or unpin is a few elements added or deleted, whatever the number of
# guests, and the rules stay the same five (see spoof_rules).
PIN_SETS = (
    PinSet("pinned", ["ifname"]),                 # the ports checked at all
    PinSet("pin_macs", ["ifname", "ether_addr"]),
    PinSet("pin_ips", ["ifname", "ipv4_addr"]),
    PinSet("pin_ips6", ["ifname", "ipv6_addr"]),
)


@dataclass(frozen=True)
class Element:
    """One element of one of the pin sets, by value (a port, or a port and
    one MAC or address)."""

    set: str
    key: tuple[str, ...]

    @property
    def value(self) -> Any:
        return self.key[0] if len(self.key) == 1 else {"concat": list(self.key)}


@dataclass(frozen=True)
class Rule:
    """One rule, by value: its chain and its expression as canonical JSON (so
    that two equal rules are one key, whichever order a dict was built in)."""

    chain: str
    body: str

    @classmethod
    def of(cls, chain: str, expr: Expr) -> Rule:
        return cls(chain, json.dumps(expr, sort_keys=True))

    @property
    def expr(self) -> Expr:
        result: Expr = json.loads(self.body)
        return result


# -- expression pieces ---------------------------------------------------------------------


def _match(left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> dict[str, Any]:
    return {"meta": {"key": key}}


def _field(protocol: str, name: str) -> dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": name}}


def _prefix(cidr: str) -> dict[str, Any]:
    addr, _, length = cidr.partition("/")
    return {"prefix": {"addr": addr, "len": int(length or 32)}}


DROP: dict[str, Any] = {"drop": None}
COUNTER: dict[str, Any] = {"counter": None}
MASQUERADE: dict[str, Any] = {"masquerade": None}


# -- the rules -------------------------------------------------------------------------------


def rules(ruleset: Ruleset) -> list[Rule]:
    """Every rule the table should hold for `ruleset`, each once. The host
    treats an uplink as one more bridge (masqueraded out, isolated from every
    other bridge and uplink)."""
    links = ruleset.bridges + [BridgeRules(u.name, u.subnet) for u in ruleset.uplinks]
    wanted = guard_rules() + masquerade_rules(links) + isolation_rules(links) + \
        uplink_rules(ruleset.uplinks, ruleset.transfer_range) + \
        inbound_rules(ruleset.uplink) + forward_rules(ruleset.forwards) + spoof_rules()
    return list(dict.fromkeys(wanted))


def elements(ruleset: Ruleset) -> set[Element]:
    """Every element the pin sets should hold for `ruleset`."""
    return {element for pin in ruleset.pins for element in pin_elements(pin)}


def guard_rules() -> list[Rule]:
    """127.0.0.0/8 only ever arrives over `lo` (CVE-2020-8558).

    hbd's bridges have route_localnet on (see net.ensure_bridge), and another
    daemon may have turned it on for every interface; either way a packet from
    a guest or the LAN addressed to (or claiming to come from) 127.0.0.0/8
    would otherwise reach services that trust loopback. Counted, so that an
    attempt shows (`nft list table ip hbd_…`)."""
    not_lo = _match(_meta("iifname"), "lo", "!=")
    return [Rule.of("guard", [not_lo, _match(_field("ip", direction), LOOPBACK_NET),
                              COUNTER, DROP])
            for direction in ("daddr", "saddr")]


def masquerade_rules(bridges: list[BridgeRules]) -> list[Rule]:
    """What leaves a (non-internal) bridge for elsewhere goes out with the
    host's address; published ports reached over 127.0.0.1 arrive at the
    guest with the bridge's address (it cannot answer a loopback one)."""
    out = [Rule.of("postrouting", [_match(_field("ip", "saddr"), _prefix(b.subnet)),
                                   _match(_meta("oifname"), b.name, "!="), MASQUERADE])
           for b in bridges if not b.internal]
    out += [Rule.of("postrouting", [_match(_field("ip", "saddr"), LOOPBACK_NET),
                                    _match(_meta("oifname"), b.name), MASQUERADE])
            for b in bridges]
    return out + [hairpin_rule(b) for b in bridges]


def hairpin_rule(bridge: BridgeRules) -> Rule:
    """A guest reaching a published port by the host's address, DNATed back
    into its own network: its peer must answer through the host, which
    un-NATs the reply, so the connection comes from the bridge's address.
    (Where br_netfilter runs, the host bridges such a packet back instead of
    routing it and passes the peer's reply through conntrack anyway; there a
    guest cannot reach its own published port at all, as the bridge sends
    nothing back out of the port it came in by.)"""
    subnet = _prefix(bridge.subnet)
    return Rule.of("postrouting", [_match(_field("ip", "saddr"), subnet),
                                   _match(_field("ip", "daddr"), subnet),
                                   _match(_meta("oifname"), bridge.name),
                                   _match({"ct": {"key": "status"}}, "dnat", "in"),
                                   MASQUERADE])


def isolation_rules(bridges: list[BridgeRules]) -> list[Rule]:
    """Nothing is forwarded between two hbd bridges (networks are isolated),
    nor in or out of an internal network."""
    out = []
    names = [b.name for b in bridges]
    for b in bridges:
        others = [n for n in names if n != b.name]
        if others:
            out.append(Rule.of("forward", [_match(_meta("iifname"), b.name),
                                           _match(_meta("oifname"), {"set": others}), DROP]))
        if b.internal:
            out.append(Rule.of("forward", [_match(_meta("iifname"), b.name),
                                           _match(_meta("oifname"), b.name, "!="), DROP]))
            out.append(Rule.of("forward", [_match(_meta("oifname"), b.name),
                                           _match(_meta("iifname"), b.name, "!="), DROP]))
    return out


def uplink_rules(uplinks: list[Uplink], transfer_range: str) -> list[Rule]:
    """A namespace reaches the host by its own uplink's address only: not the
    host end of another namespace's uplink (the host's address there), nor,
    through the forwarding isolation_rules forbid, its far end."""
    if not transfer_range:
        return []
    return [Rule.of("input", [_match(_meta("iifname"), u.name),
                              _match(_field("ip", "daddr"), _prefix(transfer_range)),
                              _match(_field("ip", "daddr"), u.address, "!="), DROP])
            for u in uplinks]


def inbound_rules(uplink: str) -> list[Rule]:
    """In a namespace: what comes in by the uplink reaches its bridges only as
    a published port (DNATed here) or as the answer to a connection from
    inside; nothing else the host might route there starts a connection."""
    if not uplink:
        return []
    return [Rule.of("forward", [_match(_meta("iifname"), uplink),
                                _match({"ct": {"key": "state"}}, "new", "in"),
                                _match({"ct": {"key": "status"}}, "dnat", "!"), DROP])]


def forward_rules(forwards: list[PortForward]) -> list[Rule]:
    """Published ports DNATed to their guest, for traffic from outside
    (prerouting) and from the host itself (output)."""
    out = []
    for chain in ("prerouting", "output"):
        for f in forwards:
            to_host = _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local") \
                if f.host_ip in ("", "0.0.0.0") else _match(_field("ip", "daddr"), f.host_ip)
            out.append(Rule.of(chain, [to_host,
                                       _match(_field(f.protocol, "dport"), f.host_port),
                                       {"dnat": {"addr": f.guest_ip, "port": f.guest_port}}]))
    return out


def spoof_rules() -> list[Rule]:
    """A guest sends from a pinned port only as itself: its MAC, its addresses
    (in IP and in ARP), so it can neither impersonate another container nor
    poison its neighbours' ARP caches. (0.0.0.0 and :: are what address
    probes come from; fe80::/10 what IPv6 neighbour discovery does.) Ports
    not pinned (other bridges' on this host) are none of these rules' business."""
    port = _meta("iifname")
    pinned = _match(port, "@pinned")

    def not_own(source: dict[str, Any], pins: str) -> dict[str, Any]:
        return _match({"concat": [port, source]}, f"@{pins}", "!=")

    arp_ip = {"payload": {"protocol": "arp", "field": "saddr ip"}}
    return [
        Rule.of("antispoof", [pinned, not_own(_field("ether", "saddr"), "pin_macs"), DROP]),
        Rule.of("antispoof", [pinned, not_own({"payload": {"protocol": "arp",
                                                           "field": "saddr ether"}},
                                              "pin_macs"), DROP]),
        Rule.of("antispoof", [pinned, _match(arp_ip, "0.0.0.0", "!="),
                              not_own(arp_ip, "pin_ips"), DROP]),
        Rule.of("antispoof", [pinned, _match(_field("ip", "saddr"), "0.0.0.0", "!="),
                              not_own(_field("ip", "saddr"), "pin_ips"), DROP]),
        Rule.of("antispoof", [pinned, _match(_field("ip6", "saddr"),
                                             {"set": ["::", _prefix("fe80::/10")]}, "!="),
                              not_own(_field("ip6", "saddr"), "pin_ips6"), DROP]),
    ]


def pin_elements(pin: PortPin) -> list[Element]:
    return [Element("pinned", (pin.port,)), Element("pin_macs", (pin.port, pin.mac))] + \
        [Element("pin_ips", (pin.port, ip)) for ip in pin.ips] + \
        [Element("pin_ips6", (pin.port, ip)) for ip in pin.ips6]


# -- transactions ----------------------------------------------------------------------------


def _table(family: str, name: str) -> dict[str, Any]:
    return {"table": {"family": family, "name": name}}


def _add_rule(table: str, rule: Rule) -> Command:
    return {"add": {"rule": {"family": FAMILY_OF[rule.chain], "table": table,
                             "chain": rule.chain, "expr": rule.expr}}}


def remove_commands(table: str) -> list[Command]:
    """The tables gone, whether they were there or not (adding an existing
    table is no error, so the delete always finds one)."""
    return [cmd for family in FAMILIES
            for cmd in ({"add": _table(family, table)}, {"delete": _table(family, table)})]


def rebuild_commands(table: str, wanted: list[Rule],
                     wanted_elements: set[Element] | None = None) -> list[Command]:
    """The table made afresh with its chains, sets, `wanted` and
    `wanted_elements`, replacing whatever was there, in one transaction: no
    moment without the rules."""
    commands = remove_commands(table) + [{"add": _table(f, table)} for f in FAMILIES]
    commands += [{"add": {"chain": {"family": c.family, "table": table, "name": c.name,
                                    "type": c.type, "hook": c.hook, "prio": c.prio,
                                    "policy": "accept"}}} for c in CHAINS]
    commands += [{"add": {"set": {"family": "bridge", "table": table, "name": s.name,
                                  "type": s.type if len(s.type) > 1 else s.type[0]}}}
                 for s in PIN_SETS]
    return commands + [_add_rule(table, r) for r in wanted] + \
        element_commands(table, set(), wanted_elements or set())


def update_commands(table: str, applied: dict[Rule, int], wanted: list[Rule]) -> list[Command]:
    """From the rules `applied` (with their handles) to `wanted`: delete the
    ones that went by handle, add the new ones. [] when nothing changed."""
    keep = set(wanted)
    commands: list[Command] = [
        {"delete": {"rule": {"family": FAMILY_OF[rule.chain], "table": table,
                             "chain": rule.chain,
                             "handle": handle}}}
        for rule, handle in applied.items() if rule not in keep]
    return commands + [_add_rule(table, r) for r in wanted if r not in applied]


def element_commands(table: str, applied: set[Element],
                     wanted: set[Element]) -> list[Command]:
    """From the set elements `applied` to `wanted`: the ones that went
    deleted, the new ones added, a command per set and kind."""
    commands: list[Command] = []
    for verb, elements in (("delete", applied - wanted), ("add", wanted - applied)):
        for pin_set in PIN_SETS:
            values = sorted((e for e in elements if e.set == pin_set.name),
                            key=lambda e: e.key)
            if values:
                commands.append({verb: {"element": {
                    "family": "bridge", "table": table, "name": pin_set.name,
                    "elem": [e.value for e in values]}}})
    return commands


def added_handles(sent: list[Command], echoed: list[dict[str, Any]]) -> dict[Rule, int]:
    """The handle of each rule `sent` added, from libnftables' echo of the
    transaction (which repeats the commands in order, each with its handle)."""
    adds = [c["add"]["rule"] for c in sent if "rule" in c.get("add", {})]
    echoes = [e["add"]["rule"] for e in echoed
              if isinstance(e.get("add"), dict) and "rule" in e["add"]]
    if len(adds) != len(echoes):
        raise ValueError(f"{len(adds)} rules added, {len(echoes)} echoed")
    return {Rule.of(a["chain"], a["expr"]): int(e["handle"])
            for a, e in zip(adds, echoes, strict=True)}
