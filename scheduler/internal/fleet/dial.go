package fleet

import (
	"fmt"
	"net/netip"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/docker"
	"github.com/berthhq/berth/scheduler/internal/hosts"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// DialOptions are how the scheduler reaches registered hosts' engines.
type DialOptions struct {
	// Prefix is the environment (--prefix).
	Prefix string
	// Network (--network) and NetworkPrefixes (--network-cidr): where
	// containers are reached instead of published ports. A registered host
	// on a Network needs NetworkPrefixes.
	Network         string
	NetworkPrefixes []netip.Prefix
	// Policy is what a registration may name (--host-tls-dir,
	// --allow-loopback-hosts); a stored host that breaks it is not used.
	Policy hosts.Policy
	// Auths are every registry credential (--registry-auth-file); each
	// host's engine receives only those of its registries.
	Auths *docker.RegistryAuths
	// LogMaxSize and LogMaxFiles are the log limits of containers whose
	// spec sets none (--log-max-size, --log-max-files).
	LogMaxSize  spec.LogSize
	LogMaxFiles int
}

// DockerDial returns the Dial of registered hosts: it checks each stored
// registration against o.Policy again (the flags may have changed since,
// or a link in --host-tls-dir now points out of it), resolves its TLS
// files under --host-tls-dir and hands the engine only the credentials of
// the registries the host may receive. A host refused is down, with the
// error as its reason.
func DockerDial(o DialOptions, logger *zap.Logger) Dial {
	return func(h store.Host) (Engine, error) {
		s := hosts.FromRecord(h)
		tls, err := s.Check(o.Policy)
		if err != nil {
			return nil, fmt.Errorf("host %s is not used: its registration is refused: %w", h.Name, err)
		}
		if o.Network != "" && len(o.NetworkPrefixes) == 0 {
			return nil, fmt.Errorf("host %s is not used: with --network %s, a registered host's containers are reached on their network address, "+
				"which only --network-cidr lets the scheduler check: set it to the prefixes that network's addresses lie in", h.Name, o.Network)
		}
		do := docker.Options{Prefix: o.Prefix, PublishAddress: h.Address, Network: o.Network, NetworkPrefixes: o.NetworkPrefixes,
			Allowed: o.Policy.CheckIP, RegistryAuths: o.Auths.Only(h.Registries), Host: h.Name, URL: h.DockerURL,
			LogMaxSize: o.LogMaxSize, LogMaxFiles: o.LogMaxFiles}
		if tls != nil {
			do.TLS = &docker.TLSFiles{CA: tls.CA, Cert: tls.Cert, Key: tls.Key}
		}
		return docker.New(do, logger)
	}
}
