// Package hosts is the registry of Docker hosts as operators write it
// (`scheduler hosts add`, PUT /v1/hosts/{name}): the registration, its
// strict validation under the operator's Policy (which addresses a host
// may name, where its TLS files may lie, which registries' credentials it
// may receive), and the confinement of TLS files to --host-tls-dir. All of
// it is pure except Policy.Resolve and Spec.Check, which read the file
// system to resolve symbolic links.
package hosts

import (
	"fmt"
	"net/netip"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// MaxLabels caps a host's labels; MaxRegistries the registries whose
// credentials it may receive.
const (
	MaxLabels     = 64
	MaxRegistries = 64
)

// Spec registers one host: how to reach its engine, where its published
// ports are reached, its labels and capacity.
type Spec struct {
	Name string `json:"name"`
	// DockerURL is unix:///path/docker.sock or tcp://host:port.
	DockerURL string `json:"docker_url"`
	// TLS are the client files of a tcp:// engine: the CA that signed the
	// engine's certificate, and the client certificate and key. Each lies
	// under the scheduler's --host-tls-dir.
	TLS *TLS `json:"tls,omitempty"`
	// Address is the IP the host's published ports are reached on.
	Address string            `json:"address"`
	Labels  map[string]string `json:"labels,omitempty"`
	// CPU (cores) and Memory are what instances may reserve there; zero
	// (or absent): no limit.
	CPU    float64       `json:"cpu,omitempty"`
	Memory spec.ByteSize `json:"memory,omitempty"`
	// Registries are the image registries (host[:port], docker.io for
	// Docker Hub) whose credentials from --registry-auth-file the host's
	// engine may receive with a pull; none: it pulls without credentials.
	Registries []string `json:"registries,omitempty"`
}

// TLS are a tcp:// engine's client files.
type TLS struct {
	CA   string `json:"ca"`
	Cert string `json:"cert"`
	Key  string `json:"key"`
}

// Validate returns every problem, each naming its field, under the
// operator's policy p. It reads no file: Check also resolves the TLS files.
func (s *Spec) Validate(p Policy) error {
	var es spec.Errors
	es.Check("name", spec.CheckName(s.Name))
	s.checkURL(&es, p)
	if s.TLS != nil {
		p.checkTLS(&es, s.TLS)
	}
	if a, err := netip.ParseAddr(s.Address); err != nil {
		es.Add("address", "%q must be the IP address the host's published ports are reached on", s.Address)
	} else if err := p.CheckIP(a); err != nil {
		es.Add("address", "%q %v", s.Address, err)
	}
	if len(s.Labels) > MaxLabels {
		es.Add("labels", "has %d labels; at most %d", len(s.Labels), MaxLabels)
	}
	for k, v := range s.Labels {
		es.Check(spec.Key("labels", k), spec.CheckLabelKey(k))
		es.Check(spec.Key("labels", k), spec.CheckLabelValue(v))
	}
	if s.CPU < 0 || s.CPU > 4096 {
		es.Add("cpu", "(%g) must be between 0 (no limit) and 4096 cores", s.CPU)
	}
	if s.Memory < 0 || s.Memory > 1<<50 {
		es.Add("memory", "must be between 0 (no limit) and 1Pi")
	}
	if len(s.Registries) > MaxRegistries {
		es.Add("registries", "has %d registries; at most %d", len(s.Registries), MaxRegistries)
	}
	for i, r := range s.Registries {
		path := fmt.Sprintf("registries[%d]", i)
		if err := CheckRegistry(r); err != nil {
			es.Add(path, "%v", err)
		} else if slices.Index(s.Registries, r) < i {
			es.Add(path, "%q is named twice", r)
		}
	}
	return es.Err()
}

// checkURL checks docker_url: unix:///clean/path, or tcp://host:port with
// TLS unless the host is a loopback IP, and an IP host that p allows.
func (s *Spec) checkURL(es *spec.Errors, p Policy) {
	u, err := url.Parse(s.DockerURL)
	switch {
	case s.DockerURL == "":
		es.Add("docker_url", "must be set: unix:///var/run/docker.sock, or tcp://HOST:2376 with tls")
	case err != nil:
		es.Add("docker_url", "%q is not a URL: want unix:///path or tcp://host:port", s.DockerURL)
	case u.RawQuery != "" || u.Fragment != "" || u.User != nil:
		es.Add("docker_url", "%q: no user, query or fragment: unix:///path or tcp://host:port", s.DockerURL)
	case u.Scheme == "unix":
		if u.Host != "" || u.Path == "" || !path.IsAbs(u.Path) || path.Clean(u.Path) != u.Path {
			es.Add("docker_url", "%q: a unix URL names an absolute, clean socket path (unix:///var/run/docker.sock)", s.DockerURL)
		} else {
			es.Check("docker_url", spec.CheckFilePath(u.Path))
		}
		if s.TLS != nil {
			es.Add("tls", "is for a tcp:// engine; a unix socket needs none")
		}
	case u.Scheme == "tcp":
		host, port := u.Hostname(), u.Port()
		ip, ipErr := netip.ParseAddr(host)
		if n, err := strconv.Atoi(port); host == "" || err != nil || n < 1 || n > 65535 || (u.Path != "" && u.Path != "/") {
			es.Add("docker_url", "%q: a tcp URL is tcp://host:port and nothing else", s.DockerURL)
		} else if ipErr == nil {
			if err := p.CheckIP(ip); err != nil {
				es.Add("docker_url", "%q: its host %s %v", s.DockerURL, host, err)
			}
		} else if strings.HasPrefix(host, "*.") || spec.CheckHost(host) != nil {
			es.Add("docker_url", "%q: the host is neither a host name nor an IP address", s.DockerURL)
		}
		if s.TLS == nil && (ipErr != nil || !ip.Unmap().IsLoopback()) {
			es.Add("tls", "must be set for a tcp:// engine off loopback: the Docker API without TLS is root on that host for anyone who reaches its port")
		}
	default:
		es.Add("docker_url", "%q: the scheme must be unix or tcp", s.DockerURL)
	}
}

// CheckRegistry checks a registry a host may receive credentials for: a
// lowercase host name or IP with an optional port, as an image reference
// names it ("registry.corp.example", "ghcr.io", "10.0.0.5:5000",
// "[fd00::5]:5000"); Docker Hub is "docker.io".
func CheckRegistry(r string) error {
	switch r {
	case "index.docker.io", "registry-1.docker.io":
		return fmt.Errorf("%q is Docker Hub: write docker.io", r)
	}
	if r != strings.ToLower(r) {
		return fmt.Errorf("%q: write the registry in lowercase (%s)", r, strings.ToLower(r))
	}
	host, port := r, ""
	if h, p, err := splitPort(r); err == nil {
		host, port = h, p
	}
	bad := fmt.Errorf("%q is not a registry: a host name or IP address with an optional port, as an image names it (registry.corp.example, ghcr.io, 10.0.0.5:5000, docker.io)", r)
	if port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port {
			return bad
		}
	}
	if strings.HasPrefix(host, "[") {
		a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"))
		if err != nil || !a.Is6() || a.Zone() != "" || port == "" {
			return bad
		}
		return nil
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	if strings.HasPrefix(host, "*.") || spec.CheckHost(host) != nil {
		return bad
	}
	return nil
}

// splitPort splits "host:port" and "[v6]:port"; a bare host is an error.
func splitPort(s string) (host, port string, err error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 || strings.HasSuffix(s[:i], "[") || (strings.Contains(s[:i], ":") && !strings.HasSuffix(s[:i], "]")) {
		return "", "", fmt.Errorf("no port")
	}
	return s[:i], s[i+1:], nil
}

// Record is the spec as the store keeps it.
func (s *Spec) Record() store.Host {
	h := store.Host{Name: s.Name, DockerURL: s.DockerURL, Address: s.Address, Labels: s.Labels, CPU: s.CPU, Memory: int64(s.Memory),
		Registries: slices.Clone(s.Registries)}
	if s.TLS != nil {
		h.TLSCA, h.TLSCert, h.TLSKey = s.TLS.CA, s.TLS.Cert, s.TLS.Key
	}
	return h
}

// FromRecord is a stored host as a spec.
func FromRecord(h store.Host) Spec {
	s := Spec{Name: h.Name, DockerURL: h.DockerURL, Address: h.Address, Labels: h.Labels, CPU: h.CPU, Memory: spec.ByteSize(h.Memory)}
	if len(h.Registries) > 0 {
		s.Registries = slices.Clone(h.Registries)
	}
	if h.TLSCA != "" || h.TLSCert != "" || h.TLSKey != "" {
		s.TLS = &TLS{CA: h.TLSCA, Cert: h.TLSCert, Key: h.TLSKey}
	}
	return s
}

// String names a host for messages.
func (s *Spec) String() string { return fmt.Sprintf("%s (%s)", s.Name, s.DockerURL) }
