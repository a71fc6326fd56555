package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/api"
	"github.com/berthhq/berth/scheduler/internal/hosts"
)

// hostsCmd is `scheduler hosts …`: the registry of Docker hosts.
type hostsCmd struct {
	Add     hostAddCmd  `cmd:"" help:"Register a Docker host, or change a registered one (its drain stays)."`
	Ls      hostLsCmd   `cmd:"" help:"List the hosts: state, capacity, what their instances reserve."`
	Drain   hostNameCmd `cmd:"" help:"Move every instance off a host under the rolling-update rules, and place nothing there until undrain."`
	Undrain hostNameCmd `cmd:"" help:"Place instances on a drained host again."`
	Rm      hostRmCmd   `cmd:"" help:"Forget a host; one that instances still run on needs --force."`
}

type hostAddCmd struct {
	clientFlags `embed:""`
	Name        string            `arg:"" help:"Host name: a DNS label."`
	DockerURL   string            `name:"docker-url" help:"unix:///var/run/docker.sock, or tcp://HOST:2376 with --tls-*." required:""`
	Address     string            `help:"IP address the host's published ports are reached on." required:""`
	Label       map[string]string `help:"A label (k=v), for placement constraints and spread_by; repeat for more." mapsep:"none"`
	CPU         float64           `help:"Cores instances may reserve there (0: no limit)." default:"0"`
	Memory      string            `help:"Memory instances may reserve there (16Gi; 0: no limit)." default:"0"`
	TLSCA       string            `name:"tls-ca" help:"tcp://: the CA that signed the engine's certificate." type:"path"`
	TLSCert     string            `name:"tls-cert" help:"tcp://: the client certificate." type:"path"`
	TLSKey      string            `name:"tls-key" help:"tcp://: the client key." type:"path"`
	Registry    []string          `help:"A registry (host[:port] as images name it; docker.io for Docker Hub) whose credential from the scheduler's --registry-auth-file this host's engine may receive with a pull; repeat for more. Without any, it pulls without credentials."`
}

type hostLsCmd struct {
	clientFlags `embed:""`
}

type hostNameCmd struct {
	clientFlags `embed:""`
	Name        string `arg:"" help:"Host name."`
}

type hostRmCmd struct {
	clientFlags `embed:""`
	Name        string `arg:"" help:"Host name."`
	Force       bool   `help:"Remove it even though instances still run there (they are replaced elsewhere)."`
}

func hostsDispatch(ctx context.Context, c *cli, command string, out io.Writer) error {
	h := &c.Hosts
	switch {
	case strings.HasPrefix(command, "hosts add"):
		cl, err := newClient(h.Add.clientFlags)
		if err != nil {
			return err
		}
		mem, err := spec.ParseByteSize(h.Add.Memory)
		if err != nil {
			return fmt.Errorf("--memory: %w", err)
		}
		s := hosts.Spec{Name: h.Add.Name, DockerURL: h.Add.DockerURL, Address: h.Add.Address, Labels: h.Add.Label, CPU: h.Add.CPU, Memory: mem,
			Registries: h.Add.Registry}
		if h.Add.TLSCA != "" || h.Add.TLSCert != "" || h.Add.TLSKey != "" {
			s.TLS = &hosts.TLS{CA: h.Add.TLSCA, Cert: h.Add.TLSCert, Key: h.Add.TLSKey}
		}
		body, _ := json.Marshal(s)
		var v api.HostView
		if err := cl.do(ctx, "PUT", "/v1/hosts/"+s.Name, body, &v); err != nil {
			return err
		}
		return show(out, h.Add.Output, v, func(w io.Writer) {
			fmt.Fprintf(w, "%s: registered (%s%s, address %s, registry credentials: %s); the leader connects to it now\n", v.Name, v.DockerURL, withTLS(v.TLS), v.Address, registries(v.Registries))
		})
	case strings.HasPrefix(command, "hosts ls"):
		cl, err := newClient(h.Ls.clientFlags)
		if err != nil {
			return err
		}
		var vs []api.HostView
		if err := cl.do(ctx, "GET", "/v1/hosts", nil, &vs); err != nil {
			return err
		}
		return show(out, h.Ls.Output, vs, func(w io.Writer) {
			if len(vs) == 0 {
				fmt.Fprintln(w, "no host is registered: every instance runs on the scheduler's local Docker engine")
				return
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "HOST\tSTATE\tADDRESS\tCPU\tMEMORY\tINSTANCES\tLABELS\tREGISTRIES\tDOCKER")
			var reasons []string
			for _, v := range vs {
				state := v.State
				if v.Drain {
					state += ",draining"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s%s\n", v.Name, state, v.Address, capacity(fmt.Sprintf("%.2f", v.ReservedCPU), v.CPU > 0, fmt.Sprintf("%g", v.CPU)),
					capacity(v.ReservedMemory.String(), v.Memory > 0, v.Memory.String()), v.Instances, labels(v.Labels), registries(v.Registries), v.DockerURL, withTLS(v.TLS))
				if v.StateReason != "" {
					reasons = append(reasons, v.Name+": "+v.StateReason)
				}
			}
			tw.Flush()
			for _, r := range reasons {
				fmt.Fprintln(w, r)
			}
		})
	case strings.HasPrefix(command, "hosts drain"), strings.HasPrefix(command, "hosts undrain"):
		n, verb := h.Drain, "drain"
		if strings.HasPrefix(command, "hosts undrain") {
			n, verb = h.Undrain, "undrain"
		}
		cl, err := newClient(n.clientFlags)
		if err != nil {
			return err
		}
		var v api.HostView
		if err := cl.do(ctx, "POST", "/v1/hosts/"+n.Name+"/"+verb, nil, &v); err != nil {
			return err
		}
		return show(out, n.Output, v, func(w io.Writer) {
			if v.Drain {
				fmt.Fprintf(w, "%s: draining: its %d instance(s) move to other hosts under each app's rolling-update rules; nothing new is placed there\n", v.Name, v.Instances)
			} else {
				fmt.Fprintf(w, "%s: takes instances again\n", v.Name)
			}
		})
	case strings.HasPrefix(command, "hosts rm"):
		cl, err := newClient(h.Rm.clientFlags)
		if err != nil {
			return err
		}
		path := "/v1/hosts/" + h.Rm.Name
		if h.Rm.Force {
			path += "?force=true"
		}
		if err := cl.do(ctx, "DELETE", path, nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(out, "%s: removed\n", h.Rm.Name)
		return nil
	}
	return fmt.Errorf("unknown command %q", command)
}

func capacity(reserved string, limited bool, total string) string {
	if !limited {
		return reserved + "/-"
	}
	return reserved + "/" + total
}

func withTLS(tls bool) string {
	if tls {
		return " (tls)"
	}
	return ""
}

func registries(rs []string) string {
	if len(rs) == 0 {
		return "-"
	}
	return strings.Join(rs, ",")
}

// checkHosts checks the flags of registered hosts: --host-tls-dir, and
// --network-cidr with --network.
func (r *runCmd) checkHosts() []error {
	var errs []error
	if r.HostTLSDir != "" {
		switch st, err := os.Stat(r.HostTLSDir); {
		case !filepath.IsAbs(r.HostTLSDir) || filepath.Clean(r.HostTLSDir) != r.HostTLSDir || r.HostTLSDir == "/":
			errs = append(errs, fmt.Errorf("--host-tls-dir %q: must be an absolute, clean path other than /: the directory that holds only hosts' TLS files", r.HostTLSDir))
		case err != nil:
			errs = append(errs, fmt.Errorf("--host-tls-dir: %w", err))
		case !st.IsDir():
			errs = append(errs, fmt.Errorf("--host-tls-dir %s: is not a directory", r.HostTLSDir))
		}
	}
	if len(r.NetworkCIDR) > 0 && r.Network == "" {
		errs = append(errs, errors.New("--network-cidr needs --network: it bounds the addresses of containers on that network"))
	}
	if _, err := r.networkPrefixes(); err != nil {
		errs = append(errs, err)
	}
	return errs
}

// never are ranges a --network-cidr may not reach into: no container
// address on a Docker network is there, and an engine that reported one
// would send nginx and healthd to this machine or a metadata endpoint.
var never = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"), netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("224.0.0.0/4"), netip.MustParsePrefix("255.255.255.255/32"),
	netip.MustParsePrefix("::/128"), netip.MustParsePrefix("::1/128"), netip.MustParsePrefix("fe80::/10"), netip.MustParsePrefix("ff00::/8"),
	netip.MustParsePrefix("::ffff:0:0/96"),
}

// networkPrefixes parses --network-cidr.
func (r *runCmd) networkPrefixes() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, c := range r.NetworkCIDR {
		p, err := netip.ParsePrefix(c)
		if err != nil || p != p.Masked() {
			return nil, fmt.Errorf("--network-cidr %q: must be a prefix such as 172.18.0.0/16 or fd00:b::/64, with no host bits set", c)
		}
		for _, n := range never {
			if p.Overlaps(n) {
				return nil, fmt.Errorf("--network-cidr %s: overlaps %s, where no container address on a Docker network lies (loopback, link-local, unspecified, multicast or IPv4-mapped)", c, n)
			}
		}
		out = append(out, p)
	}
	return out, nil
}

// hostPolicy is what a host registration may name, from the flags.
func (r *runCmd) hostPolicy() hosts.Policy {
	return hosts.Policy{TLSDir: r.HostTLSDir, AllowLoopback: r.LoopbackHosts}
}

func labels(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}
