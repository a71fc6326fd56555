package docker

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
)

// ErrForeignAddress is an address an engine reported for one of its
// containers that is not where that host's containers are reached: nginx
// would proxy there and healthd probe it. See AddressError.
var ErrForeignAddress = errors.New("docker: the engine reported a container address that is not its host's")

// AddressError is an address an engine reported for a container, refused:
// the container is not to be routed to.
type AddressError struct {
	// Host is the registered host ("": the local engine).
	Host      string
	Container string
	// Address is what the engine reported, as it reported it.
	Address string
	// Reason says what the address should have been.
	Reason string
}

func (e *AddressError) Error() string {
	engine := "the local engine"
	if e.Host != "" {
		engine = "the engine of host " + e.Host
	}
	return fmt.Sprintf("container %s: %s reported the address %s: %s", ShortID(e.Container), engine, e.Address, e.Reason)
}

// Unwrap is ErrForeignAddress.
func (e *AddressError) Unwrap() error { return ErrForeignAddress }

// binding is one published port as an engine reports it.
type binding struct {
	ip   netip.Addr
	port string
}

func (b binding) String() string {
	ip := "<none>"
	if b.ip.IsValid() {
		ip = b.ip.String()
	}
	return net.JoinHostPort(ip, b.port)
}

// reach is where a client's containers are reached, against which what an
// engine reports is checked.
type reach struct {
	// host is the registered host ("": the local engine).
	host string
	// publish is the address ports are published on: the host's
	// registered address, or --publish-address (without network).
	publish netip.Addr
	// network is --network: containers are reached by their address on it.
	network string
	// prefixes (--network-cidr) hold every container address on network;
	// a registered host's containers need them.
	prefixes []netip.Prefix
	// allowed refuses addresses of a kind no host is reached on; nil: any.
	allowed func(netip.Addr) error
}

// published is the address of a container that publishes its port on
// r.publish, from the bindings its engine reports: "" when it reports none
// (the container does not run). Every binding must be on r.publish, with a
// port: one elsewhere is the engine naming another machine, refused with
// the binding as reported. Pure.
func (r reach) published(bs []binding) (addr string, reported string, err error) {
	var ports []uint16
	for _, b := range bs {
		if b.port == "" {
			continue // a port that is not published (yet)
		}
		if b.ip.Unmap() != r.publish.Unmap() {
			return "", b.String(), fmt.Errorf("a published port must be on %s, the address %s", r.publish, r.whose())
		}
		p, err := strconv.ParseUint(b.port, 10, 16)
		if err != nil || p == 0 || strconv.FormatUint(p, 10) != b.port {
			return "", b.String(), fmt.Errorf("%q is not a port number (1-65535)", b.port)
		}
		ports = append(ports, uint16(p))
	}
	if len(ports) == 0 {
		return "", "", nil
	}
	return netip.AddrPortFrom(r.publish, slices.Min(ports)).String(), "", nil
}

// onNetwork is the address of a container on r.network: its IP there and
// its port (the one Berth created it with, or the lowest it exposes), ""
// when it has no address on the network (it does not run). The IP must
// pass r.allowed, and lie in r.prefixes: an engine that names an address
// outside them (another machine, a metadata endpoint) is refused. Pure.
func (r reach) onNetwork(ip netip.Addr, port uint16, exposed []uint16) (addr string, reported string, err error) {
	if !ip.IsValid() {
		return "", "", nil
	}
	if port == 0 && len(exposed) > 0 {
		port = slices.Min(exposed)
	}
	if port == 0 {
		return "", "", nil
	}
	ap := netip.AddrPortFrom(ip, port)
	if ip.Zone() != "" || ip.Unmap().IsLoopback() {
		return "", ap.String(), errors.New("a container's address on a Docker network is never loopback or zoned")
	}
	if r.allowed != nil {
		if err := r.allowed(ip); err != nil {
			return "", ap.String(), err
		}
	}
	if len(r.prefixes) == 0 {
		if r.host != "" {
			return "", ap.String(), fmt.Errorf("a registered host's containers on --network %s are accepted only within --network-cidr, which is not set", r.network)
		}
		return ap.String(), "", nil
	}
	for _, p := range r.prefixes {
		if p.Contains(ip.Unmap()) {
			return ap.String(), "", nil
		}
	}
	return "", ap.String(), fmt.Errorf("an address on --network %s must lie in --network-cidr %v", r.network, r.prefixes)
}

// whose names r.publish for messages.
func (r reach) whose() string {
	if r.host == "" {
		return "the scheduler publishes on (--publish-address)"
	}
	return "host " + r.host + " is registered with"
}
